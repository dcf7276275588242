"""Tiny model components suited to the editing world, saved as a stock InstructPix2Pix pipeline folder.

* tokenizer: a CLIP BPE tokenizer whose merges make every word of the world's instructions and failure texts one
  token (other text still encodes, byte by byte), padding to 20 tokens;
* text encoder: a one-layer CLIP text model built by hand so that different texts get well separated encodings
  (`build_text_encoder`, checked by `text_separation`), frozen during training as in the paper;
* VAE: an exact identity `AutoencoderKL` built by hand (`build_identity_vae`): the random dummy VAE of
  `reward_edit_pipeline.testing` does not reconstruct images (edits decoded through it could not be judged), and a
  small learned VAE did not reach a usable reconstruction within a CPU budget (150 steps: mean error 0.12, the
  exact judge scored its round trips about 1.4 / 1.8 / 1.8);
* UNet: a small random 8-channel `UNet2DConditionModel` (InstructPix2Pix layout) that cross-attends to the text at
  16 x 16 and 8 x 8, the common initialization of every model in the experiment;
* scheduler: DDIM with zero terminal SNR, v-prediction and "trailing" timesteps (`build_scheduler`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT
from reward_edit_pipeline.testing import get_dummy_tokenizer

from .world import BACKGROUND_COLOURS, GLOBAL_OPERATIONS, OBJECT_COLOURS, QUADRANTS, SHAPES, STYLE_OPERATIONS

logger = logging.getLogger(__name__)

TEXT_MAX_LENGTH = 20  # tokens per text (the longest instruction or failure text of the world has 14)
IDENTITY_CHANNELS, PREFIX_CHANNELS, HASH_CHANNELS = 96, 96, 64
TEXT_WIDTH = IDENTITY_CHANNELS + PREFIX_CHANNELS + HASH_CHANNELS
HASH_FEATURES = 1024
FUNCTION_WORDS = ("make", "the", "a", "in", "to", "it", "is", "none", ";", "and")  # left out of the prefix mean
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


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one lower-case word: merge the lowest-ranked adjacent pair until none is in `ranks`."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), index) for index, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, index = min(pairs)
        if rank == len(ranks):
            break
        pieces[index : index + 2] = [pieces[index] + pieces[index + 1]]
    return pieces


def build_tokenizer(max_length: int = TEXT_MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP BPE tokenizer in which every word of the world is one token, padding/truncating to `max_length`.

    Merges are added until a fixed point: each round runs BPE on every word with the merges so far and appends the
    merges that join its remaining pieces left to right (later merges rank lower, so earlier words stay whole).
    """
    words = sorted({word for text in world_words() for word in text.lower().replace(";", " ").split()})
    merges: list[tuple[str, str]] = []
    for _ in range(len(words) + 1):
        ranks = {merge: rank for rank, merge in enumerate(merges)}
        split_words = [pieces for pieces in (_bpe(word, ranks) for word in words) if len(pieces) > 1]
        if not split_words:
            break
        for pieces in split_words:
            current = pieces[0]
            for piece in pieces[1:]:
                if (current, piece) not in merges:
                    merges.append((current, piece))
                current = current + piece
    else:  # pragma: no cover - each round joins at least one pair of every split word
        raise RuntimeError("could not build single-token merges for the world's words")
    tokenizer = get_dummy_tokenizer(merges)
    tokenizer.model_max_length = max_length
    return tokenizer


def build_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    """A frozen one-layer CLIP text model, built by hand so that texts are told apart (see `text_separation`).

    Channels of every output token (width `TEXT_WIDTH`):

    * identity (96): the token's own embedding; the world's words (and BOS/EOS) get orthonormal embeddings, so
      "red" and "blue" are orthogonal;
    * prefix (96): the mean of the identity parts of the tokens so far (causal attention with constant queries and
      keys; EOS/padding tokens get a key of -30 and are left out, so every padding position sees the whole text);
    * hash (64): a random sparse feature map of the prefix mean (1024 features thresholded at about 1 sigma) projected
      to 64 channels: prefixes that differ in one word give nearly unrelated hashes.

    The final LayerNorm weights the hash channels most, so the padding positions (and the pooled EOS output, which
    carries failure texts) are close to a per-text random code, while word positions keep their identity.
    """
    generator = torch.Generator().manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_WIDTH,
        intermediate_size=HASH_FEATURES,
        num_attention_heads=1,
        num_hidden_layers=1,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
    )
    model = CLIPTextModel(config).eval()
    identity = slice(0, IDENTITY_CHANNELS)
    prefix = slice(IDENTITY_CHANNELS, IDENTITY_CHANNELS + PREFIX_CHANNELS)
    hashed = slice(IDENTITY_CHANNELS + PREFIX_CHANNELS, TEXT_WIDTH)
    vocabulary = tokenizer.get_vocab()
    world_ids = sorted(
        {vocabulary[token] for word in world_words() for token in tokenizer.tokenize(word.lower())}
        | {tokenizer.bos_token_id, tokenizer.eos_token_id}
    )
    ignored_ids = sorted(
        {vocabulary[token] for word in FUNCTION_WORDS for token in tokenizer.tokenize(word)}
        | {tokenizer.bos_token_id, tokenizer.eos_token_id}
    )
    if len(world_ids) > IDENTITY_CHANNELS:
        raise ValueError(f"{len(world_ids)} world tokens do not fit {IDENTITY_CHANNELS} orthogonal channels")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        embedding = model.embeddings.token_embedding.weight
        # zero-mean unit rows: other tokens (bytes) random, world tokens orthonormal
        embedding[:, identity] = torch.randn(len(tokenizer), IDENTITY_CHANNELS, generator=generator)
        orthogonal, _ = torch.linalg.qr(torch.randn(IDENTITY_CHANNELS, IDENTITY_CHANNELS, generator=generator))
        embedding[world_ids, identity] = orthogonal[: len(world_ids)] * IDENTITY_CHANNELS**0.5
        layer = model.encoder.layers[0]
        attention = layer.self_attn
        # query: constant 1 (bias); key: -30 for EOS/padding and the function words, 0 for content words (logits
        # are k / sqrt(width) and LayerNorm'ed tokens have norm sqrt(width)): the prefix mean is over content words
        for token_id in ignored_ids:
            direction = embedding[token_id, identity] / embedding[token_id, identity].norm()
            attention.k_proj.weight[0, identity] -= 30.0 * direction
        attention.q_proj.bias[0] = 1.0
        attention.v_proj.weight[identity, identity] = torch.eye(IDENTITY_CHANNELS)
        attention.out_proj.weight[prefix, identity] = torch.eye(IDENTITY_CHANNELS)
        mlp = layer.mlp
        gain = 1.0 / PREFIX_CHANNELS**0.5
        mlp.fc1.weight[:, prefix] = torch.randn(HASH_FEATURES, PREFIX_CHANNELS, generator=generator) * gain
        mlp.fc1.bias.fill_(-1.0)  # about 18 % of the features fire for a world text
        mlp.fc2.weight[hashed, :] = torch.randn(HASH_CHANNELS, HASH_FEATURES, generator=generator)
        final = model.final_layer_norm
        final.weight[identity] = 1.0
        final.weight[prefix] = 0.5
        final.weight[hashed] = 3.0
    model.requires_grad_(False)
    return model


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
    seed: int,
    latent_size: int,
    widths: tuple[int, int] = (32, 64),
    layers_per_block: int = 1,
    full_resolution_attention: bool = True,
) -> UNet2DConditionModel:
    """A small random InstructPix2Pix UNet that reads the instruction by cross-attention at 8 x 8 and, with
    `full_resolution_attention`, also in the first down block (16 x 16 for the default world)."""
    torch.manual_seed(seed)
    first = "CrossAttnDownBlock2D" if full_resolution_attention else "DownBlock2D"
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=8,
        out_channels=4,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=(first, "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )


def build_scheduler() -> DDIMScheduler:
    """Zero terminal SNR (`rescale_betas_zero_snr`) with v-prediction and DDIM "trailing" spacing (Lin et al., 2024).

    At t = T no signal survives, so the model cannot learn the image's mean colour from a residue that pure noise at
    inference lacks (Stable Diffusion's schedule keeps about 7 % of the signal there, which painted colour casts).
    The trainer builds its `DDPMScheduler` from this config (same betas, rescale and prediction type); the pipeline
    samples with this DDIM scheduler.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def _cosines(vectors: torch.Tensor) -> dict[str, float]:
    if len(vectors) < 2:
        raise ValueError(f"need at least two distinct texts to compare, got {len(vectors)}")
    unit = torch.nn.functional.normalize(vectors.flatten(1).double(), dim=1)
    matrix = unit @ unit.T
    off_diagonal = matrix[~torch.eye(len(unit), dtype=torch.bool)]
    return {"mean": round(float(off_diagonal.mean()), 4), "max": round(float(off_diagonal.max()), 4)}


def text_separation(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, instructions: list[str], failure_texts: list[str]
) -> dict[str, object]:
    """Off-diagonal cosines between the encodings of distinct texts: the sequence the UNet cross-attends to
    (`[max_length, width]`, flattened) and the pooled EOS vector (what the reward UNet reads of a failure text)."""

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            output = text_encoder(ids)
        return output.last_hidden_state, output.pooler_output

    instructions, failure_texts = sorted(set(instructions)), sorted(set(failure_texts))
    sequences, pooled = encode(instructions)
    report: dict[str, object] = {
        "instructions": len(instructions),
        "instruction_sequence_cosine": _cosines(sequences),
        "instruction_pooled_cosine": _cosines(pooled),
        "failure_texts": len(failure_texts),
    }
    if len(failure_texts) > 1:  # (clean data has one failure text only)
        failure_sequences, failure_pooled = encode(failure_texts)
        report["failure_text_sequence_cosine"] = _cosines(failure_sequences)
        report["failure_text_pooled_cosine"] = _cosines(failure_pooled)
    report |= {
        "longest_text_tokens": max(len(tokenizer(t).input_ids) for t in instructions + failure_texts),
        "max_length": tokenizer.model_max_length,
    }
    pair = ("make the circle red", "make the circle blue")
    if all(text in instructions for text in pair):
        first, second = (sequences[instructions.index(text)].flatten() for text in pair)
        report["red_vs_blue_sequence_cosine"] = round(float(torch.cosine_similarity(first, second, dim=0)), 4)
    return report


def score_embedding_separation(values: tuple[float, ...] = (1.0, 3.0, 4.0, 5.0), width: int = 256) -> dict[str, float]:
    """Cosines between the sinusoidal features that `RewardUNet2DConditionModel` computes for single scores
    (diffusers' `Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)`, the reward UNet's settings)."""
    from diffusers.models.embeddings import Timesteps

    features = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)(torch.tensor(values))
    unit = torch.nn.functional.normalize(features, dim=1)
    result = {}
    for i, first in enumerate(values):
        for j in range(i + 1, len(values)):
            result[f"{first:g}_vs_{values[j]:g}"] = round(float(unit[i] @ unit[j]), 4)
    return result


def save_base_pipeline(
    path: str | os.PathLike, vae: AutoencoderKL, unet_seed: int, text_seed: int, image_size: int
) -> Path:
    """Save the common initialization: a stock InstructPix2Pix folder with the identity VAE, the hand-built text
    encoder, a random UNet and the zero-terminal-SNR v-prediction DDIM scheduler."""
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer, text_seed)
    unet = build_unet(unet_seed, image_size // 2 ** (len(vae.config.block_out_channels) - 1))
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path, safe_serialization=True)
    return Path(path)
