"""Tiny random-weight Qwen-Image-Edit components built in code (tests, benchmarks; no network; PIL image processor).

- `get_dummy_qwen_tokenizer`: a byte-level BPE `Qwen2Tokenizer` (256 byte symbols, a few merges) with the chat and
  vision special tokens the edit pipelines' prompt templates use;
- `get_dummy_qwen_text_encoder`: a 2-layer `Qwen2_5_VLForConditionalGeneration` (vision tower included) whose config
  points at those special-token ids;
- `get_dummy_qwen_processor`: `Qwen2VLProcessor` over the PIL (torchvision-free) `Qwen2VLImageProcessorPil`;
- `get_dummy_qwen_vae`, `get_dummy_qwenimage_transformer_config`, `get_dummy_qwen_scheduler`.

With `vae_image_area = condition_image_area = 32 * 32` a 2-step, 32×32 edit runs in well under a second on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_TEXT_WIDTH = 32
_QWEN_MERGES = (("t", "h"), ("Ġ", "t"), ("e", "r"), ("i", "n"), ("o", "n"), ("Ġ", "a"), ("N", "o"), ("No", "n"))


def _byte_level_alphabet() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for raw bytes (GPT-2's byte → unicode table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def get_dummy_qwen_tokenizer() -> Qwen2Tokenizer:
    """A small offline byte-level `Qwen2Tokenizer`; special tokens get ids after the byte symbols and merges."""
    vocab: dict[str, int] = {symbol: index for index, symbol in enumerate(_byte_level_alphabet())}
    for left, right in _QWEN_MERGES:
        vocab.setdefault(left + right, len(vocab))
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in _QWEN_MERGES],
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    tokenizer.model_max_length = 1024
    return tokenizer


def get_dummy_qwen_text_encoder(tokenizer: Qwen2Tokenizer, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """A 2-layer Qwen2.5-VL (text width 32, 2-block vision tower, patch 14, merge 2) matching `tokenizer`."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": QWEN_TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": QWEN_TEXT_WIDTH,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def get_dummy_qwen_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """`Qwen2VLProcessor` with the PIL image processor; images are resized to 28×28 … 56×56 pixels (1–4 tokens).

    `Qwen2VLProcessor` insists on a video processor, and transformers' only one needs torchvision (imported here
    lazily; the edit pipelines never pass videos)."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    return Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )


def get_dummy_qwen_vae(seed: int = 0) -> AutoencoderKLQwenImage:
    """A tiny `AutoencoderKLQwenImage`: z_dim 4, spatial factor 8."""
    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()


def get_dummy_qwenimage_transformer_config(zero_cond_t: bool = False) -> dict[str, Any]:
    """Config of a 2-block `QwenImageTransformer2DModel` (width 48) over the tiny VAE's 4 latent channels."""
    return {
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 3,
        "joint_attention_dim": QWEN_TEXT_WIDTH,
        "axes_dims_rope": (4, 6, 6),
        "zero_cond_t": zero_cond_t,
    }


def get_dummy_qwenimage_transformer(seed: int = 0, zero_cond_t: bool = False) -> QwenImageTransformer2DModel:
    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(**get_dummy_qwenimage_transformer_config(zero_cond_t)).eval()


def get_dummy_qwen_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )


def get_dummy_qwen_base_components(seed: int = 0, zero_cond_t: bool = False) -> dict[str, Any]:
    """Components of a stock `QwenImageEditPipeline` / `QwenImageEditPlusPipeline` (random tiny weights)."""
    tokenizer = get_dummy_qwen_tokenizer()
    return {
        "scheduler": get_dummy_qwen_scheduler(),
        "vae": get_dummy_qwen_vae(seed),
        "text_encoder": get_dummy_qwen_text_encoder(tokenizer, seed),
        "tokenizer": tokenizer,
        "processor": get_dummy_qwen_processor(tokenizer),
        "transformer": get_dummy_qwenimage_transformer(seed, zero_cond_t),
    }


TINY_REFERENCE_AREA = 32 * 32


def randomize_reward_modules(transformer: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give the (zero-initialised) reward modules random weights, as a trained model would have nonzero ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in transformer.reward_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(noise.to(parameter.device) * std)


def make_dummy_qwen_edit_pipeline(
    plus: bool = False, seed: int = 0, reward_init: str = "zero", randomize_rewards: bool = False
):
    """A tiny `RewardQwenImageEditPipeline` (or the Plus variant, with `zero_cond_t` as in -2511) wrapping the tiny
    stock pipeline, with 32×32 reference areas so that a 2-step 32×32 edit runs in about a second or two on a CPU."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    from .pipelines.pipeline_reward_qwenimage_edit import RewardQwenImageEditPipeline, RewardQwenImageEditPlusPipeline

    stock_class = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    reward_class = RewardQwenImageEditPlusPipeline if plus else RewardQwenImageEditPipeline
    stock = stock_class(**get_dummy_qwen_base_components(seed, zero_cond_t=plus))
    pipe = reward_class.from_base(stock, reward_init=reward_init, reward_token_dim=24, reward_sinusoid_dim=32)
    if randomize_rewards:
        randomize_reward_modules(pipe.transformer, seed)
    pipe.vae_image_area = TINY_REFERENCE_AREA
    pipe.condition_image_area = TINY_REFERENCE_AREA
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_qwen_edit_call_kwargs() -> dict[str, Any]:
    """Call arguments of a fast tiny edit (2 steps, 32×32, no true CFG, numpy output)."""
    return {"num_inference_steps": 2, "height": 32, "width": 32, "true_cfg_scale": 1.0, "output_type": "np"}


def save_dummy_qwen_edit_folder(path: str | os.PathLike, plus: bool = False, seed: int = 0) -> Path:
    """Save a tiny *stock* `QwenImageEditPipeline` (or `QwenImageEditPlusPipeline` with `zero_cond_t`) folder."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    stock_class = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    stock_class(**get_dummy_qwen_base_components(seed, zero_cond_t=plus)).save_pretrained(path)
    return Path(path)
