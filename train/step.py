"""The training objective of one micro-batch (shared by the trainer and `bench/train_step.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .cache import encode_pixels, encode_prompt_ids


@dataclass
class LossContext:
    """Everything besides the UNet and the batch that the loss needs.

    `generator` draws, in this order: flips, the VAE posterior sample, the noise, the timesteps, the conditioning
    dropout and the reward dropout. `None` uses the global generator (for shape-only runs on the meta device).
    """

    vae: Any
    text_encoder: Any
    noise_scheduler: Any
    null_prompt_embeds: torch.Tensor  # [1, L, D]: the empty prompt, used for prompt dropout
    generator: torch.Generator | None
    device: torch.device
    latent_channels: int
    latent_size: int
    cached: bool
    with_rewards: bool
    random_flip: bool = True
    conditioning_dropout_prob: float = 0.05
    reward_dropout_prob: float = 0.05
    failure_text_embed_dim: int | None = None
    failure_text_table: torch.Tensor | None = None  # [distinct failure texts, D] (stage 2, uncached batches)


def _rand(ctx: LossContext, *size: int) -> torch.Tensor:
    return torch.rand(size, generator=ctx.generator, device=ctx.device)


def training_loss(unet: Any, batch: dict[str, Any], ctx: LossContext) -> tuple[torch.Tensor, int]:
    """InstructPix2Pix loss (plus reward conditions in stage 2) of one micro-batch; returns `(loss, good samples)`.

    Latents of the edited image are a fresh sample of its VAE posterior (scaled); the original image enters as the
    posterior mode (unscaled), concatenated to the noisy latents on channels. Conditioning dropout follows
    InstructPix2Pix: with u ~ U(0, 1), u < p drops the prompt, p <= u < 2p both, 2p <= u < 3p the image. Reward
    dropout (independent) gives a row the UNet's null reward condition (`null_reward_mask`).
    """
    size = batch["batch_size"]
    empty = size == 0
    weight_dtype = ctx.null_prompt_embeds.dtype
    if empty:
        # Every sample of this micro-batch was skipped. Run one all-zero placeholder with loss weight 0 so that every
        # process still takes part in the gradient all-reduce; it adds nothing to the gradient.
        rows = 1
        original_latents = torch.zeros(rows, ctx.latent_channels, ctx.latent_size, ctx.latent_size, device=ctx.device)
        edited_mean, edited_std = torch.zeros_like(original_latents), torch.ones_like(original_latents)
        prompt_embeds = ctx.null_prompt_embeds
        reward_scores = torch.full((rows, 3), 5.0, device=ctx.device)
        failure_text_embeds = torch.zeros(rows, ctx.failure_text_embed_dim or 1, device=ctx.device, dtype=weight_dtype)
    else:
        rows = size
        flip = _rand(ctx, rows) < 0.5 if ctx.random_flip else torch.zeros(rows, dtype=torch.bool, device=ctx.device)
        flip4 = flip.view(-1, 1, 1, 1)
        if ctx.cached:

            def pick(name: str) -> torch.Tensor:
                return torch.where(flip4, batch[name + "_flipped"], batch[name]) if ctx.random_flip else batch[name]

            original_latents = pick("original_latents")
            edited_mean, edited_std = pick("edited_latent_mean"), pick("edited_latent_std")
            prompt_embeds = batch["prompt_embeds"]
            failure_text_embeds = batch.get("failure_text_embeds")
        else:
            original = batch["original_pixel_values"]
            edited = batch["edited_pixel_values"]
            original_latents, _ = encode_pixels(ctx.vae, torch.where(flip4, original.flip(-1), original))
            edited_mean, edited_std = encode_pixels(ctx.vae, torch.where(flip4, edited.flip(-1), edited))
            prompt_embeds = encode_prompt_ids(ctx.text_encoder, batch["input_ids"])
            failure_text_embeds = ctx.failure_text_table[batch["failure_text_index"]] if ctx.with_rewards else None
        reward_scores = batch.get("reward_scores")

    shape = (rows, ctx.latent_channels, ctx.latent_size, ctx.latent_size)
    posterior_noise = torch.randn(shape, generator=ctx.generator, device=ctx.device)
    latents = (edited_mean.float() + edited_std.float() * posterior_noise) * ctx.vae.config.scaling_factor
    noise = torch.randn(shape, generator=ctx.generator, device=ctx.device)
    num_train_timesteps = ctx.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_train_timesteps, (rows,), generator=ctx.generator, device=ctx.device)
    noisy_latents = ctx.noise_scheduler.add_noise(latents, noise, timesteps)

    p = ctx.conditioning_dropout_prob
    uniform = _rand(ctx, rows)
    drop_prompt = (uniform < 2 * p).view(-1, 1, 1)
    prompt_embeds = torch.where(drop_prompt, ctx.null_prompt_embeds.expand_as(prompt_embeds), prompt_embeds)
    keep_image = 1.0 - ((uniform >= p) & (uniform < 3 * p)).to(original_latents.dtype)
    original_latents = original_latents * keep_image.view(-1, 1, 1, 1)
    model_input = torch.cat([noisy_latents, original_latents.to(noisy_latents.dtype)], dim=1)

    reward_kwargs: dict[str, Any] = {}
    if ctx.with_rewards:
        reward_kwargs = {
            "reward_scores": reward_scores.float(),
            "failure_text_embeds": failure_text_embeds,
            "null_reward_mask": _rand(ctx, rows) < ctx.reward_dropout_prob,
        }
    prediction_type = ctx.noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = ctx.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    # One forward per micro-batch: the UNet embeds the rewards inside its (stateless) forward, the same code path a
    # sampler uses with a precomputed `reward_condition`; nothing is stored on the module, so DDP and threads are safe.
    prediction = unet(model_input, timesteps, prompt_embeds, **reward_kwargs).sample
    loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
    return (loss * 0.0 if empty else loss), size
