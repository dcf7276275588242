"""Tiny model components suited to the editing world, saved as a stock InstructPix2Pix pipeline folder.

* tokenizer: a CLIP BPE tokenizer whose merges make every word of the world's instructions and failure texts one
  token (other text still encodes, byte by byte);
* text encoder: a small random CLIP text model (frozen during training, as in the paper);
* VAE: an exact identity `AutoencoderKL` built by hand (`build_identity_vae`): the random dummy VAE of
  `reward_edit_pipeline.testing` does not reconstruct images (edits decoded through it could not be judged), and a
  small learned VAE did not reach a usable reconstruction within a CPU budget (150 steps: mean error 0.12, the
  exact judge scored its round trips about 1.4 / 1.8 / 1.8);
* UNet: a small random 8-channel `UNet2DConditionModel` (InstructPix2Pix layout), the common initialization of every
  model in the experiment.
"""

from __future__ import annotations

import logging
import os
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

from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT
from reward_edit_pipeline.testing import get_dummy_tokenizer

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
    return get_dummy_tokenizer(merges)


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


IDENTITY_VAE_CARRIER = 100.0  # constant channels that dominate each GroupNorm group's statistics


def build_identity_vae(sample_size: int) -> AutoencoderKL:
    """An `AutoencoderKL` whose latents are the pixels themselves (exact up to float rounding), built by hand.

    The world's images are tiny, so diffusion can run on pixels; building the identity *as an AutoencoderKL* keeps
    every project code path (trainer, latent cache, pipeline) unchanged. Latent channels 0-2 are the RGB values in
    [-1, 1], channel 3 is 0; the posterior std is exp(-10).

    Construction: one block, no down/up-sampling, no mid-block attention; every resnet's second convolution is zero,
    so each resnet is the identity. Each GroupNorm group holds a data channel d, its negation -d and six constant
    carrier channels +-K: the group mean is exactly 0 and its variance is dominated by K, so the norm passes d through
    (relative error ~1e-5); the following SiLU is undone by the output convolution as SiLU(d) - SiLU(-d) = d.
    """
    width, groups, latent_channels = 32, 4, 4
    vae = AutoencoderKL(
        block_out_channels=(width,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=groups,
        sample_size=sample_size,
        mid_block_add_attention=False,
    )
    size = width // groups
    carrier = IDENTITY_VAE_CARRIER
    gain = carrier * float(np.sqrt((size - 2) / size))  # the group std without the data channels
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.fill_(1.0)

        def spread(conv: torch.nn.Conv2d, inputs: int) -> None:
            centre = conv.kernel_size[0] // 2
            for group in range(groups):
                base = group * size
                if group < inputs:
                    conv.weight[base, group, centre, centre] = 1.0
                    conv.weight[base + 1, group, centre, centre] = -1.0
                for offset in range(2, size):
                    conv.bias[base + offset] = carrier if offset % 2 == 0 else -carrier

        def collect(norm: torch.nn.GroupNorm, conv: torch.nn.Conv2d, outputs: int) -> None:
            centre = conv.kernel_size[0] // 2
            norm.weight.zero_()
            for group in range(groups):
                base = group * size
                norm.weight[base] = gain
                norm.weight[base + 1] = gain
                if group < outputs:
                    conv.weight[group, base, centre, centre] = 1.0
                    conv.weight[group, base + 1, centre, centre] = -1.0

        spread(vae.encoder.conv_in, 3)
        collect(vae.encoder.conv_norm_out, vae.encoder.conv_out, latent_channels)
        vae.encoder.conv_out.bias[latent_channels:] = -20.0  # log-variance: std = exp(-10)
        spread(vae.decoder.conv_in, latent_channels)
        collect(vae.decoder.conv_norm_out, vae.decoder.conv_out, 3)
        vae.quant_conv.weight[:, :, 0, 0] = torch.eye(2 * latent_channels)
        vae.post_quant_conv.weight[:, :, 0, 0] = torch.eye(latent_channels)
    return vae.eval()


def set_scaling_factor(vae: AutoencoderKL, images: np.ndarray) -> float:
    """`scaling_factor` = 1 / std of the latents of `images` (uint8 [N, H, W, 3]), as SD's 0.18215 is for its VAE."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()[:, :3]
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    return scaling


def build_unet(
    seed: int, latent_size: int, widths: tuple[int, int] = (32, 64), layers_per_block: int = 1
) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=8,
        out_channels=4,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )


def save_base_pipeline(
    path: str | os.PathLike, vae: AutoencoderKL, unet_seed: int, text_seed: int, image_size: int
) -> Path:
    """Save the common initialization: a stock InstructPix2Pix folder with the trained VAE and random UNet."""
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer, text_seed)
    unet = build_unet(unet_seed, image_size // 2 ** (len(vae.config.block_out_channels) - 1))
    # Stable Diffusion's schedule. (A run with DDPM's linear schedule, 1e-4 ... 0.02, learned far less in the same
    # number of steps: its samples were still noise.)
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
