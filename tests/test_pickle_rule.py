"""The loaders' pickle rule (`reward_edit_pipeline.downloads.apply_pickle_rule`), on every pipeline loader.

A folder whose component weights are only pickles (`.bin`: loading one can run code) is refused by default with an
error naming the file; `allow_pickle=True` reads it (trusted folders) and gives the same weights as the safetensors
folder; `use_safetensors=False` is refused by name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reward_edit_pipeline import RewardEditPipeline
from reward_edit_pipeline.downloads import apply_pickle_rule, pickled_weight_files
from reward_edit_pipeline.loading import load_pipeline
from reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline
from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import RewardQwenImageEditPipeline
from reward_edit_pipeline.testing import (
    save_dummy_instruct_pix2pix_folder,
    save_dummy_official_folder,
    save_dummy_pipeline,
)
from reward_edit_pipeline.testing_dit import save_dummy_flux_kontext_folder
from reward_edit_pipeline.testing_qwenimage import save_dummy_qwen_edit_folder


def pickle_component(folder: Path, component: str, pickle_name: str) -> Path:
    """Copy of `folder` whose `component` weights are a pickle `pickle_name` instead of safetensors."""
    pickled = folder.with_name(folder.name + "-pickled")
    shutil.copytree(folder, pickled)
    (weights,) = (pickled / component).glob("*.safetensors")
    torch.save(load_file(weights), pickled / component / pickle_name)
    weights.unlink()
    return pickled


def assert_same_weights(loaded: torch.nn.Module, expected: torch.nn.Module) -> None:
    """Equal base weights (the reward modules a stock loader adds are freshly initialised on each call)."""
    got, want = loaded.state_dict(), expected.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        if name.startswith(("reward_conditioner.", "reward_attention.")):
            continue
        assert torch.equal(got[name], tensor), name


LOADERS: dict[str, tuple[Callable[[Path], Path], str, str, Callable[..., object], str]] = {
    # case: (write the safetensors folder, component, pickle file name, loader, component attribute)
    "sd-from_pretrained": (
        lambda path: save_dummy_pipeline(path), "unet", "diffusion_pytorch_model.bin",
        RewardEditPipeline.from_pretrained, "unet",
    ),
    "sd-from_official": (
        lambda path: save_dummy_official_folder(path), "unet", "diffusion_pytorch_model.bin",
        RewardEditPipeline.from_official, "unet",
    ),
    "sd-load_pipeline": (
        lambda path: save_dummy_pipeline(path), "vae", "diffusion_pytorch_model.bin",
        lambda path, **kwargs: load_pipeline(path, device="cpu", **kwargs), "vae",
    ),
    "sd-from_instruct_pix2pix": (
        lambda path: save_dummy_instruct_pix2pix_folder(path), "text_encoder", "pytorch_model.bin",
        RewardEditPipeline.from_instruct_pix2pix, "text_encoder",
    ),
    "flux-from_flux_kontext": (
        lambda path: save_dummy_flux_kontext_folder(path), "transformer", "diffusion_pytorch_model.bin",
        RewardFluxKontextPipeline.from_flux_kontext, "transformer",
    ),
    "qwen-from_qwen_image_edit": (
        lambda path: save_dummy_qwen_edit_folder(path), "vae", "diffusion_pytorch_model.bin",
        RewardQwenImageEditPipeline.from_qwen_image_edit, "vae",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LOADERS))
def test_pickled_weights_are_refused_by_default_and_read_with_allow_pickle(case, tmp_path):
    write, component, pickle_name, load, attribute = LOADERS[case]
    folder = write(tmp_path / case)
    pickled = pickle_component(folder, component, pickle_name)
    assert pickled_weight_files(pickled) == [f"{component}/{pickle_name}"]

    with pytest.raises(FileNotFoundError, match=rf"only as pickle files \({component}/{pickle_name}\).*allow_pickle"):
        load(pickled)
    if case != "sd-load_pipeline":  # load_pipeline takes no diffusers loading kwargs
        with pytest.raises(ValueError, match="use_safetensors=False"):
            load(pickled, use_safetensors=False)
    expected = getattr(load(folder), attribute)
    assert_same_weights(getattr(load(pickled, allow_pickle=True), attribute), expected)


def test_saved_dit_pipeline_with_pickled_transformer_is_refused(tmp_path):
    folder = tmp_path / "flux"
    RewardFluxKontextPipeline.from_flux_kontext(save_dummy_flux_kontext_folder(tmp_path / "stock")).save_pretrained(
        folder
    )
    pickled = pickle_component(folder, "transformer", "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"transformer/diffusion_pytorch_model.bin"):
        RewardFluxKontextPipeline.from_pretrained(pickled)
    reloaded = RewardFluxKontextPipeline.from_pretrained(pickled, allow_pickle=True)
    assert_same_weights(reloaded.transformer, RewardFluxKontextPipeline.from_pretrained(folder).transformer)


def test_cli_edit_refuses_a_pickled_folder_with_exit_2(tmp_path):
    from PIL import Image

    folder = pickle_component(save_dummy_pipeline(tmp_path / "sd"), "unet", "diffusion_pytorch_model.bin")
    image = tmp_path / "in.png"
    Image.new("RGB", (20, 18), (200, 10, 10)).save(image)
    result = subprocess.run(
        [sys.executable, "-m", "reward_edit_pipeline", "edit", str(image), "make it blue", "-o",
         str(tmp_path / "out.png"), "--model", str(folder), "--steps", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "unet/diffusion_pytorch_model.bin" in result.stderr and "pickle" in result.stderr
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_allow_pickle_must_be_a_bool(value, tmp_path):
    with pytest.raises(ValueError, match="`allow_pickle` must be True or False"):
        apply_pickle_rule(tmp_path, {"allow_pickle": value}, "loader")


def test_the_rule_sets_use_safetensors_and_pops_allow_pickle(tmp_path):
    kwargs: dict[str, object] = {}
    apply_pickle_rule(tmp_path, kwargs, "loader")
    assert kwargs == {"use_safetensors": True}
    kwargs = {"allow_pickle": True, "use_safetensors": False}
    apply_pickle_rule(tmp_path, kwargs, "loader")
    assert kwargs == {"use_safetensors": False}
