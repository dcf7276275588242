"""The registry of DiT editor families that `reward-edit train --backbone ...` can train (see `train/dit.py`).

Each family plugs into the generic loop of `train/dit.py` through a `DitBackboneAdapter`; `train/dit.py` registers
FLUX.1 Kontext and imports `train/dit_qwen.py`, which registers Qwen-Image-Edit.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class DitBackboneAdapter:
    """How the generic loop talks to one DiT editor family."""

    name: str = ""

    def load_pipeline(self, args: argparse.Namespace, dtype: Any) -> Any:
        """The reward pipeline to train (a base checkpoint wrapped with zero-initialised reward modules)."""
        raise NotImplementedError

    def lora_target_modules(self, transformer: Any) -> list[str]:
        """Module names (PEFT `target_modules`) of the base attention projections."""
        raise NotImplementedError

    def encode_examples(
        self, pipe: Any, examples: Sequence[Any], resolution: int, device: Any, skips: Any = None
    ) -> dict[str, Any]:
        """Cache on the CPU: `keys` of the readable examples, per-example tensors (stacked on dim 0) and shared
        tensors (e.g. position ids). Unreadable pairs are counted in `skips` (raised when it is `None`)."""
        raise NotImplementedError

    def training_loss(
        self, transformer: Any, cache: dict[str, Any], rows: Any, generator: Any, null_reward_mask: Any, args: Any
    ) -> Any:
        """Flow-matching (or the backbone's) loss of the cached examples `rows`; random draws come from the CPU
        `generator` (so a resumed run draws the same numbers)."""
        raise NotImplementedError


BACKBONES: dict[str, DitBackboneAdapter] = {}


def register_backbone(adapter: DitBackboneAdapter) -> None:
    """Make `--backbone adapter.name` trainable."""
    BACKBONES[adapter.name] = adapter


def read_model_index(path: str) -> dict[str, Any]:
    """The `model_index.json` of a local pipeline folder, or `{}` (a Hub repo id, or no index)."""
    index_path = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_path):
        return {}
    with open(index_path, encoding="utf-8") as handle:
        return json.load(handle)


@dataclass
class FlowMatchingBatch:
    """One micro-batch of the rectified-flow objective, drawn from the CPU cache (shared by the DiT backbones).

    `model_input` is the noisy target latents followed by the original-image (reference) latents along the token
    dimension, in the transformer's dtype; the prediction's first `target_latents.shape[1]` tokens are scored.
    """

    rows: Any
    device: Any
    weight_dtype: Any
    target_latents: Any
    noise: Any
    sigmas: Any
    model_input: Any
    guidance: Any

    def pick(self, cache: dict[str, Any], name: str) -> Any:
        """The micro-batch's rows of a cached per-example tensor, moved to the device (the cache stays on the CPU)."""
        return cache[name][self.rows].to(self.device)

    def loss(self, prediction: Any) -> Any:
        """MSE between the predicted velocity of the target tokens and `noise - target_latents` (in float32)."""
        import torch.nn.functional as F

        prediction = prediction[:, : self.target_latents.shape[1]]
        return F.mse_loss(prediction.float(), (self.noise - self.target_latents).float())


def draw_flow_matching_batch(
    transformer: Any, cache: dict[str, Any], rows: Any, generator: Any, args: argparse.Namespace
) -> FlowMatchingBatch:
    """Noise and sigmas from the CPU `generator` (so a resumed run draws the same numbers), the noisy model input
    `(1 - σ)·target + σ·noise` with the reference latents appended, and the distilled guidance when the transformer
    embeds it (`--dit_guidance_scale`)."""
    import torch

    device = transformer.device
    weight_dtype = transformer.dtype
    rows = rows.cpu()
    target_latents = cache["edited_latents"][rows].to(device)
    count = target_latents.shape[0]
    noise = torch.randn(target_latents.shape, generator=generator).to(device)
    sigmas = torch.rand(count, generator=generator).to(device)
    noisy = (1.0 - sigmas.view(-1, 1, 1)) * target_latents + sigmas.view(-1, 1, 1) * noise
    model_input = torch.cat([noisy, cache["original_latents"][rows].to(device)], dim=1).to(weight_dtype)
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((count,), args.dit_guidance_scale, device=device)
    return FlowMatchingBatch(rows, device, weight_dtype, target_latents, noise, sigmas, model_input, guidance)
