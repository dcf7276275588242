"""The DiT reward nodes (`comfy_nodes.nodes_dit`, `comfy_nodes.dit_patch`): FLUX.1 models from ComfyUI's loaders.

Fast tests check the parts that need no ComfyUI (the packed condition, the adapter folder, the wrapper's refusals);
the slow one runs `tests/comfy_dit_checks.py` inside a real ComfyUI 0.3.75 and compares ComfyUI's own Flux model,
patched by the nodes, with the library's `RewardFluxTransformer2DModel`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from reward_edit_pipeline.comfy_nodes.dit_patch import (
    FLUX,
    REWARD_MODULES_FILE,
    RewardDiTModules,
    RewardDiTWrapper,
    pack_reward_condition,
    unpack_reward_condition,
)
from reward_edit_pipeline.comfy_nodes.nodes_dit import V1_DIT_NODES
from safetensors.torch import load_file, save_file

from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel
from reward_edit_pipeline.testing_dit import get_dummy_flux_transformer_config

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def flux_adapter(tmp_path_factory) -> tuple[Path, RewardFluxTransformer2DModel]:
    """A reward_lora/ folder as `train/dit.py` writes it (config.json + reward_modules.safetensors), no LoRA."""
    torch.manual_seed(0)
    base = FluxTransformer2DModel(**get_dummy_flux_transformer_config()).eval()
    wrapped = RewardFluxTransformer2DModel.from_transformer(base, reward_init="default", reward_token_dim=24).eval()
    folder = tmp_path_factory.mktemp("reward_lora")
    state = {
        k: v.contiguous()
        for k, v in wrapped.state_dict().items()
        if k.startswith(("reward_conditioner.", "reward_attention."))
    }
    save_file(state, str(folder / REWARD_MODULES_FILE))
    wrapped.save_config(folder)
    return folder, wrapped


def test_packed_condition_round_trips_and_applies_the_library_rules():
    embed = torch.randn(1, 7)
    packed = pack_reward_condition((5.0, 2.5, 0.0), embed, 3.0)
    assert packed.shape == (1, 11) and packed.dtype == torch.float32
    scores, scales, text = unpack_reward_condition(torch.cat([packed, packed]))
    assert scores.tolist() == [[5.0, 2.5, 0.0]] * 2 and scales.tolist() == [3.0, 3.0]
    assert torch.equal(text, torch.cat([embed, embed]))
    with pytest.raises(ValueError, match="reward scores"):
        pack_reward_condition((5.5, 5.0, 5.0), embed)
    with pytest.raises(ValueError, match="reward_guidance_scale"):
        pack_reward_condition((5.0, 5.0, 5.0), embed, 0.5)
    with pytest.raises(ValueError, match="shape"):
        unpack_reward_condition(torch.zeros(2, 4))


def test_adapter_folder_loads_the_library_modules_under_the_trainer_keys(flux_adapter):
    folder, wrapped = flux_adapter
    modules = RewardDiTModules.from_adapter_folder(folder, FLUX)
    saved = load_file(str(folder / REWARD_MODULES_FILE))
    assert set(modules.state_dict()) == set(saved)
    assert all(torch.equal(modules.state_dict()[k], saved[k]) for k in saved)
    scores, text = torch.tensor([[5.0, 1.0, 3.5]]), torch.randn(1, wrapped.config.failure_text_embed_dim)
    ours = modules.reward_conditioner(scores, text)
    library = wrapped.compute_reward_condition(scores, text)
    assert torch.equal(ours.global_embedding, library.global_embedding) and torch.equal(ours.tokens, library.tokens)


def test_adapter_folder_refusals(flux_adapter, tmp_path):
    folder, _ = flux_adapter
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        RewardDiTModules.from_adapter_folder(tmp_path, FLUX)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    state = load_file(str(folder / REWARD_MODULES_FILE))
    state.pop(next(iter(state)))
    save_file(state, str(broken / REWARD_MODULES_FILE))
    with pytest.raises(ValueError, match="missing"):
        RewardDiTModules.from_adapter_folder(broken, FLUX)
    config = json.loads((folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "_class_name": "RewardQwenImageTransformer2DModel"}))
    with pytest.raises(ValueError, match="FLUX"):
        RewardDiTModules.from_adapter_folder(broken, FLUX)


def test_wrapper_refuses_a_conditioning_without_reward_and_wrong_row_counts(flux_adapter):
    folder, wrapped = flux_adapter
    wrapper = RewardDiTWrapper(RewardDiTModules.from_adapter_folder(folder, FLUX))
    x = torch.zeros(2, 4, 4, 4)

    def executor(*args, **kwargs):
        raise AssertionError("the model must not run")

    with pytest.raises(ValueError, match="Reward DiT Condition"):
        wrapper(executor, x, torch.zeros(2))
    packed = pack_reward_condition((5.0, 5.0, 5.0), torch.zeros(1, wrapped.config.failure_text_embed_dim))
    with pytest.raises(ValueError, match="1 rows for a batch of 2"):
        wrapper(executor, x, torch.zeros(2), reward_edit_dit=packed)


def test_v1_node_declarations():
    condition, loader = V1_DIT_NODES
    declared = condition.INPUT_TYPES()
    assert list(declared["required"]) == [
        "conditioning",
        "clip",
        "following",
        "preserving",
        "quality",
        "reward_guidance_scale",
    ]
    assert list(declared["optional"]) == ["failure_text"]
    assert condition.RETURN_TYPES == ("CONDITIONING",) and loader.RETURN_TYPES == ("MODEL",)
    assert list(loader.INPUT_TYPES()["required"]) == ["model", "reward_adapter", "lora_strength"]


@pytest.mark.slow
@pytest.mark.comfyui
def test_patched_comfyui_flux_matches_the_library_in_comfyui_0_3_75(tmp_path):
    """ComfyUI's own FLUX model + ModelPatcher + sampler, patched by the nodes, against the library's model."""
    sys.path.insert(0, str(TESTS))
    from comfyui_harness import BUILDS, unpack_comfyui

    comfy_dir = unpack_comfyui(BUILDS["0.3.75"], tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    completed = subprocess.run(
        [sys.executable, str(TESTS / "comfy_dit_checks.py"), str(comfy_dir), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=comfy_dir,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["node_api"] == "v3" and report["v1_v3_same_declarations"]
    assert report["comfy_vs_diffusers_base_max_abs"] < 1e-5  # the weight conversion itself
    assert report["zero_adapter_vs_plain_max_abs"] == 0.0  # zero-init adapter: ComfyUI's output unchanged
    assert report["plain_after_unpatch_max_abs"] == 0.0
    assert report["lora_patches"] == 7  # img qkv, img proj, txt qkv per double block (2) + single-block linear1
    for scale in ("1.0", "2.0"):
        assert report[f"trained_vs_library_max_abs_scale_{scale}"] < 1e-5, report
        assert report[f"trained_vs_plain_max_abs_scale_{scale}"] > 1e-2, report
    assert report["other_row_reward_row0_max_abs"] == 0.0  # a row's output depends on its own reward only
    assert report["other_row_reward_row1_max_abs"] > 1e-3
    assert "Reward DiT Condition" in report["missing_condition_error"]
    assert report["batched_rows_not_a_tensor"]  # so ComfyUI does not cast the rows to an fp16/bf16 model's dtype
    assert report["batched_rows"] == [3, "torch.float32", pytest.approx(4.3, abs=1e-6)]
    assert report["ksampler_finite"]
    assert report["ksampler_other_reward_max_abs"] > 1e-3
    assert report["ksampler_repeat_max_abs"] == 0.0  # nothing carried over between sampler runs
    assert report["ksampler_cfg_vs_cfg1_max_abs"] > 1e-3
    assert "Reward DiT Condition" in report["ksampler_negative_without_reward_error"]
