"""The training objective of one micro-batch: InstructPix2Pix conditioning dropout, reward dropout, flips."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from reward_edit_pipeline.train.step import LossContext, training_loss

from reward_edit_pipeline.testing import get_dummy_components

pytestmark = pytest.mark.usefixtures("single_torch_thread")
ROWS = 24


class RecordingUNet:
    """Stands in for the UNet: records what it is given and predicts zeros."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):
        self.calls.append({"sample": sample, "timestep": timestep, "prompt": encoder_hidden_states, **kwargs})
        return SimpleNamespace(sample=torch.zeros_like(sample[:, :4]))


@pytest.fixture(scope="module")
def parts():
    return get_dummy_components(seed=0)


def _context(parts, **overrides) -> LossContext:
    null_prompt = torch.full((1, 77, 32), -7.0)
    settings = {
        "vae": parts["vae"],
        "text_encoder": parts["text_encoder"],
        "noise_scheduler": parts["scheduler"],
        "null_prompt_embeds": null_prompt,
        "generator": torch.Generator().manual_seed(0),
        "device": torch.device("cpu"),
        "latent_channels": 4,
        "latent_size": 4,
        "cached": True,
        "with_rewards": True,
        "failure_text_embed_dim": 32,
    }
    settings.update(overrides)
    return LossContext(**settings)


def _cached_batch(rows: int = ROWS) -> dict:
    generator = torch.Generator().manual_seed(1)
    batch = {"batch_size": rows, "skipped": [], "reward_scores": torch.full((rows, 3), 4.0)}
    for name in ("original_latents", "edited_latent_mean"):
        batch[name] = torch.rand(rows, 4, 4, 4, generator=generator) + 1.0  # never zero
        batch[name + "_flipped"] = -batch[name]
    batch["edited_latent_std"] = batch["edited_latent_std_flipped"] = torch.full((rows, 4, 4, 4), 0.1)
    batch["prompt_embeds"] = torch.rand(rows, 77, 32, generator=generator)
    batch["failure_text_embeds"] = torch.rand(rows, 32, generator=generator)
    return batch


def test_conditioning_dropout_drops_prompt_image_or_both_as_instruct_pix2pix(parts):
    unet, batch = RecordingUNet(), _cached_batch()
    training_loss(unet, batch, _context(parts, conditioning_dropout_prob=1 / 3, random_flip=False))
    call = unet.calls[0]
    prompt_dropped = (call["prompt"] == -7.0).all(dim=(1, 2))
    prompt_kept = (call["prompt"] == batch["prompt_embeds"]).all(dim=(1, 2))
    image_latents = call["sample"][:, 4:]
    image_dropped = (image_latents == 0).all(dim=(1, 2, 3))
    image_kept = (image_latents == batch["original_latents"]).all(dim=(1, 2, 3))
    assert bool((prompt_dropped ^ prompt_kept).all()) and bool((image_dropped ^ image_kept).all())
    combos = {(bool(p), bool(i)) for p, i in zip(prompt_dropped, image_dropped)}
    # p = 1/3: u < p prompt only, p <= u < 2p both, 2p <= u image only; never neither
    assert combos == {(True, False), (True, True), (False, True)}


def test_no_conditioning_dropout_keeps_every_condition(parts):
    unet, batch = RecordingUNet(), _cached_batch()
    training_loss(unet, batch, _context(parts, conditioning_dropout_prob=0.0, random_flip=False))
    call = unet.calls[0]
    assert torch.equal(call["prompt"], batch["prompt_embeds"])
    assert torch.equal(call["sample"][:, 4:], batch["original_latents"])


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_reward_dropout_sets_the_null_reward_mask(parts, probability):
    unet, batch = RecordingUNet(), _cached_batch()
    training_loss(unet, batch, _context(parts, reward_dropout_prob=probability))
    mask = unet.calls[0]["null_reward_mask"]
    assert mask.dtype == torch.bool and mask.shape == (ROWS,)
    if probability == 0.0:
        assert not mask.any()
    elif probability == 1.0:
        assert mask.all()
    else:
        assert 0 < int(mask.sum()) < ROWS
    assert torch.equal(unet.calls[0]["failure_text_embeds"], batch["failure_text_embeds"])
    assert torch.equal(unet.calls[0]["reward_scores"], batch["reward_scores"])


def test_stage1_passes_no_reward_inputs(parts):
    unet, batch = RecordingUNet(), _cached_batch()
    training_loss(unet, batch, _context(parts, with_rewards=False))
    assert not {"reward_scores", "failure_text_embeds", "null_reward_mask"} & set(unet.calls[0])


def test_random_flip_picks_the_mirrored_latents_per_sample(parts):
    unet, batch = RecordingUNet(), _cached_batch()
    training_loss(unet, batch, _context(parts, conditioning_dropout_prob=0.0, random_flip=True))
    image_latents = unet.calls[0]["sample"][:, 4:]
    flipped = (image_latents == batch["original_latents_flipped"]).all(dim=(1, 2, 3))
    unflipped = (image_latents == batch["original_latents"]).all(dim=(1, 2, 3))
    assert bool((flipped ^ unflipped).all()) and 0 < int(flipped.sum()) < ROWS


def test_an_all_skipped_micro_batch_gives_an_exact_zero_loss(parts):
    unet = RecordingUNet()
    loss, size = training_loss(unet, {"batch_size": 0, "skipped": []}, _context(parts))
    assert size == 0 and loss.item() == 0.0 and unet.calls[0]["sample"].shape[0] == 1


def test_the_same_generator_state_gives_the_same_loss_inputs(parts):
    first, second = RecordingUNet(), RecordingUNet()
    training_loss(first, _cached_batch(), _context(parts))
    training_loss(second, _cached_batch(), _context(parts))
    for key in ("sample", "timestep", "prompt", "null_reward_mask"):
        assert torch.equal(first.calls[0][key], second.calls[0][key])
