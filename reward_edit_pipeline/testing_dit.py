"""Tiny random-weight components of the DiT editors for tests, examples and CI (built in code, offline, CPU-fast).

FLUX.1 Kontext: a 1+1-block Flux transformer (2 heads of 16), a 2-level VAE (scale factor 2, 4 latent channels), the
byte-level CLIP tokenizer and text encoder of `reward_edit_pipeline.testing`, and a T5 encoder with a tiny Unigram
vocabulary (`get_dummy_t5_tokenizer`). A 32×32 edit with 2 steps takes well under a second on one core.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from .models.transformer_flux_reward import RewardFluxTransformer2DModel
from .pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline
from .testing import TEXT_WIDTH, get_dummy_text_encoder, get_dummy_tokenizer

T5_WIDTH = 32
T5_MAX_LENGTH = 32  # pass as `max_sequence_length` to keep calls fast
_T5_WORDS = ("make", "it", "the", "a", "None;", "None", "snowy", "red", "blue", "hat", "sky", "is")


def get_dummy_t5_tokenizer() -> T5TokenizerFast:
    """A T5 (Unigram) tokenizer whose vocabulary is every printable character, the word marker `▁` and a few
    words, so any ASCII text encodes (other characters map to `<unk>`)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(char, -3.0) for char in string.printable if not char.isspace()]
    vocab += [("▁" + word, -1.0) for word in _T5_WORDS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def get_dummy_t5_encoder(tokenizer: T5TokenizerFast, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_WIDTH,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def get_dummy_flux_transformer_config() -> dict[str, Any]:
    """Config of a tiny `FluxTransformer2DModel` (Kontext layout: guidance-distilled, 4 latent channels × 2×2)."""
    return {
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": T5_WIDTH,
        "pooled_projection_dim": TEXT_WIDTH,
        "guidance_embeds": True,
        "axes_dims_rope": (4, 6, 6),
    }


def get_dummy_flux_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def get_dummy_flux_kontext_components(
    seed: int = 0, reward_init: str = "default", plain_transformer: bool = False, reward_token_dim: int = 24
) -> dict[str, Any]:
    """Components of a tiny `RewardFluxKontextPipeline` (or of a stock `FluxKontextPipeline` with
    `plain_transformer=True`). `reward_init="default"` also randomises the reward gates, so rewards change the
    output; `"zero"` leaves the wrapped transformer equal to its base."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**get_dummy_flux_transformer_config()).eval()
    if not plain_transformer:
        torch.manual_seed(seed + 1)
        transformer = RewardFluxTransformer2DModel.from_transformer(
            transformer, reward_init=reward_init, reward_token_dim=reward_token_dim
        )
        if reward_init == "default":  # a "trained" reward path: open the gates
            with torch.no_grad():
                for module in transformer.reward_attention:
                    module.gate.normal_(0.0, 0.5)
    tokenizer = get_dummy_tokenizer()
    tokenizer_2 = get_dummy_t5_tokenizer()
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": get_dummy_flux_vae(seed),
        "text_encoder": get_dummy_text_encoder(tokenizer, seed),
        "tokenizer": tokenizer,
        "text_encoder_2": get_dummy_t5_encoder(tokenizer_2, seed),
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_dummy_flux_kontext_base_pipeline(seed: int = 0) -> FluxKontextPipeline:
    """A tiny stock `FluxKontextPipeline` on the CPU."""
    pipe = FluxKontextPipeline(**get_dummy_flux_kontext_components(seed, plain_transformer=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_dummy_flux_kontext_pipeline(seed: int = 0, reward_init: str = "default") -> RewardFluxKontextPipeline:
    """A tiny `RewardFluxKontextPipeline` on the CPU (use 32×32 images, `max_area=32 * 32`, `_auto_resize=False`)."""
    pipe = RewardFluxKontextPipeline(**get_dummy_flux_kontext_components(seed, reward_init=reward_init))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_flux_kontext_call_kwargs(num_inference_steps: int = 2, size: int = 32) -> dict[str, Any]:
    """Call arguments that keep the tiny pipeline at `size`×`size` (the stock pipeline resizes to ~1 megapixel)."""
    return {
        "height": size,
        "width": size,
        "max_area": size * size,
        "_auto_resize": False,
        "num_inference_steps": num_inference_steps,
        "max_sequence_length": T5_MAX_LENGTH,
        "output_type": "np",
    }


def save_dummy_flux_kontext_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny stock `FluxKontextPipeline` folder (the `black-forest-labs/FLUX.1-Kontext-dev` layout)."""
    make_dummy_flux_kontext_base_pipeline(seed).save_pretrained(path)
    return Path(path)
