"""Tiny model components suited to the editing world, saved as a stock InstructPix2Pix pipeline folder.

* tokenizer: a CLIP BPE tokenizer whose merges make every word of the world's instructions and failure texts one
  token (other text still encodes, byte by byte);
* text encoder: a small random CLIP text model (frozen during training, as in the paper);
* VAE: a small `AutoencoderKL` (downsampling x2, 4 latent channels) trained here on world images for a few hundred
  steps: the random dummy VAE of `reward_edit_pipeline.testing` does not reconstruct images, so edits decoded through
  it could not be judged;
* UNet: a small random 8-channel `UNet2DConditionModel` (InstructPix2Pix layout), the common initialization of every
  model in the experiment.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT

from .world import BACKGROUND_COLOURS, GLOBAL_OPERATIONS, OBJECT_COLOURS, QUADRANTS, SHAPES, STYLE_OPERATIONS

logger = logging.getLogger(__name__)

TEXT_WIDTH = 64
EXTRA_WORDS = (
    "make the remove add a in striped change background to it is not still there no places unrequested image and "
    "noise blocking artifacts blur None; None ; , ; left right top bottom"
)


def world_words() -> list[str]:
    words = set(EXTRA_WORDS.split())
    for group in (OBJECT_COLOURS, BACKGROUND_COLOURS, SHAPES, GLOBAL_OPERATIONS, STYLE_OPERATIONS):
        words.update(group)
    for quadrant in QUADRANTS:
        words.update(quadrant.split())
    words.update(DEFAULT_NO_FAILURE_TEXT.replace(";", " ; ").split())
    return sorted(words)


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer (77 tokens) with every byte in the vocabulary and one merge chain per world word."""
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [symbol + "</w>" for symbol in symbols]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in world_words():
        word = word.lower()
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = (current, piece)
            current = current + piece
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_WIDTH,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
    )
    return CLIPTextModel(config).eval()


def build_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
    )


def build_unet(seed: int, latent_size: int, widths: tuple[int, int] = (32, 64)) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=8,
        out_channels=4,
        block_out_channels=widths,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )


def train_vae(
    vae: AutoencoderKL, images: np.ndarray, steps: int, batch_size: int = 64, seed: int = 0, lr: float = 2e-3
) -> dict[str, float]:
    """Fit the VAE to world images (uint8 [N, H, W, 3]): L1 reconstruction of the posterior sample + a small KL term.

    Sets `scaling_factor` to 1 / std of the latents (as Stable Diffusion's 0.18215 does for its VAE)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 0.05)
    vae.train()
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(steps):
        index = torch.randint(0, pixels.shape[0], (batch_size,), generator=generator)
        batch = pixels[index]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        kl = posterior.kl().mean() / batch[0].numel()
        loss = (reconstruction - batch).abs().mean() + 1e-3 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if step % 100 == 0:
            logger.info("vae step %d/%d loss %.4f", step, steps, loss_value)
    vae.eval()
    with torch.no_grad():
        sample = pixels[: min(512, pixels.shape[0])]
        latents = vae.encode(sample).latent_dist.mean
        reconstruction = vae.decode(latents).sample
        error = float((reconstruction.clamp(-1, 1) - sample).abs().mean() / 2.0)
        scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    return {
        "final_loss": loss_value,
        "mean_abs_error": error,
        "scaling_factor": scaling,
        "seconds": time.perf_counter() - started,
    }


def save_base_pipeline(
    path: str | os.PathLike, vae: AutoencoderKL, unet_seed: int, text_seed: int, image_size: int
) -> Path:
    """Save the common initialization: a stock InstructPix2Pix folder with the trained VAE and random UNet."""
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer, text_seed)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(unet_seed, image_size // factor)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path, safe_serialization=True)
    return Path(path)
