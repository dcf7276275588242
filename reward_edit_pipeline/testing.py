"""Tiny random-weight components for tests, examples and CI (diffusers' `get_dummy_components` style).

Everything is built in code from a seed: no network, seconds on a CPU. The tokenizer is a byte-level CLIP BPE
tokenizer with a tiny vocabulary (every byte, a few merges), so any text encodes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .models.unet_2d_reward import RewardUNet2DConditionModel
from .pipelines.pipeline_reward_edit import RewardEditPipeline

TEXT_WIDTH = 32
_MERGES = (("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n"), ("e", "r"), ("N", "on"), ("Non", "e</w>"))


def get_dummy_tokenizer(merges: Sequence[tuple[str, str]] = _MERGES) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer (77 tokens) whose vocabulary is every byte (with and without `</w>`) plus the
    result of each BPE merge in `merges` (applied in order)."""
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [symbol + "</w>" for symbol in symbols]:
        vocab[symbol] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=77)


def get_dummy_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
    )
    return CLIPTextModel(config).eval()


def get_dummy_unet_config(in_channels: int = 8) -> dict[str, Any]:
    """Config of a tiny `UNet2DConditionModel` (widths 32/64, text width 32)."""
    return {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "sample_size": 16,
        "in_channels": in_channels,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": TEXT_WIDTH,
        "attention_head_dim": (2, 4),
        "norm_num_groups": 32,
    }


def get_dummy_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
    )


def get_dummy_scheduler() -> EulerAncestralDiscreteScheduler:
    return EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def get_dummy_components(seed: int = 0, reward_init: str = "default", plain_unet: bool = False) -> dict[str, Any]:
    """Components of a tiny `RewardEditPipeline` (or of a stock InstructPix2Pix pipeline with `plain_unet=True`).

    `reward_init="default"` gives random reward modules, so rewards change the output; `"zero"` makes the UNet
    equal to its base.
    """
    torch.manual_seed(seed)
    base_unet = UNet2DConditionModel(**get_dummy_unet_config())
    if plain_unet:
        unet = base_unet
    else:
        torch.manual_seed(seed + 1)
        unet = RewardUNet2DConditionModel.from_unet(
            base_unet, reward_init=reward_init, failure_text_embed_dim=TEXT_WIDTH
        )
    tokenizer = get_dummy_tokenizer()
    return {
        "unet": unet.eval(),
        "scheduler": get_dummy_scheduler(),
        "vae": get_dummy_vae(seed).eval(),
        "text_encoder": get_dummy_text_encoder(tokenizer, seed),
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
    }


def make_dummy_pipeline(seed: int = 0, reward_init: str = "default") -> RewardEditPipeline:
    """A tiny `RewardEditPipeline` on the CPU (32×32 images work)."""
    pipe = RewardEditPipeline(**get_dummy_components(seed, reward_init=reward_init), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_dummy_pipeline(path: str | os.PathLike, seed: int = 0, reward_init: str = "default") -> Path:
    """Save a tiny `RewardEditPipeline` folder and return its path."""
    make_dummy_pipeline(seed, reward_init=reward_init).save_pretrained(path)
    return Path(path)


def save_dummy_instruct_pix2pix_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny stock `StableDiffusionInstructPix2PixPipeline` folder (8-channel UNet, the timbrooks layout)."""
    pipe = StableDiffusionInstructPix2PixPipeline(
        **get_dummy_components(seed, plain_unet=True), requires_safety_checker=False
    )
    pipe.save_pretrained(path)
    return Path(path)


def save_dummy_text_to_image_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny stock `StableDiffusionPipeline` folder (4-channel UNet): the base of stage-1 training."""
    components = get_dummy_components(seed, plain_unet=True)
    torch.manual_seed(seed)
    components["unet"] = UNet2DConditionModel(**get_dummy_unet_config(in_channels=4)).eval()
    StableDiffusionPipeline(**components, requires_safety_checker=False).save_pretrained(path)
    return Path(path)


def save_dummy_official_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny folder in the official stage-2 release layout: a stock InstructPix2Pix pipeline folder whose
    `unet/` is a plain `UNet2DConditionModel` config plus weights carrying the official extra keys."""
    path = save_dummy_instruct_pix2pix_folder(path, seed)
    unet = make_dummy_pipeline(seed).unet
    for stale in (path / "unet").iterdir():
        stale.unlink()
    unet.save_official_unet(path / "unet")
    return path
