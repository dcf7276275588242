"""`RewardEditPipeline.from_single_file` (inherited from diffusers' single-file loader) refuses with a clear message."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file

from reward_edit_pipeline import RewardEditPipeline


def test_from_single_file_refuses_and_names_the_loaders_to_use(tmp_path):
    import torch

    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3)}, str(checkpoint))
    with pytest.raises(NotImplementedError) as error:
        RewardEditPipeline.from_single_file(str(checkpoint))
    message = str(error.value)
    assert str(checkpoint) in message
    for loader in ("from_pretrained", "from_official", "from_instruct_pix2pix"):
        assert f"RewardEditPipeline.{loader}(" in message


def test_from_single_file_refuses_before_touching_the_network():
    with pytest.raises(NotImplementedError, match="single checkpoint file"):
        RewardEditPipeline.from_single_file("https://huggingface.co/some/repo/blob/main/model.safetensors")
