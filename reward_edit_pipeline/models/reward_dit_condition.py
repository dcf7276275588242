"""The reward condition of one DiT transformer call (shared by the Flux and Qwen reward transformers).

Pipelines build it once per call (`reward_edit_pipeline.pipelines.reward_dit_common.build_reward_condition`) and pass
it through the transformer's attention kwargs; transformers read it, never store it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .reward_conditioner import RewardConditionEmbeddings


@dataclass(frozen=True)
class RewardCondition:
    """The reward condition of one transformer call, passed as `joint_attention_kwargs["reward_condition"]` (Flux)
    or `attention_kwargs["reward_condition"]` (Qwen).

    Attributes:
        embeddings: conditioner output for the requested rewards (1 row, broadcast, or one row per batch item).
        null_embeddings: conditioner output for the null condition; required when `guidance_scale > 1`.
        guidance_scale: reward guidance; `> 1` makes the transformer also run the null condition and return
            `combine_reward_guidance(conditioned, null, guidance_scale)`.
    """

    embeddings: RewardConditionEmbeddings
    null_embeddings: RewardConditionEmbeddings | None = None
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        validate_reward_guidance_scale(self.guidance_scale)
        if self.guidance_scale > 1.0 and self.null_embeddings is None:
            raise ValueError("a RewardCondition with `guidance_scale` > 1 needs `null_embeddings`")


def combine_reward_guidance(conditioned: torch.Tensor, null: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Reward guidance: `conditioned + (guidance_scale - 1) · (conditioned - null)` (the SD pipeline's rule)."""
    return conditioned + (guidance_scale - 1.0) * (conditioned - null)


def validate_reward_guidance_scale(reward_guidance_scale: float) -> float:
    """`reward_guidance_scale` must be a finite number >= 1 (1 = off)."""
    value = reward_guidance_scale
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1.0:
        raise ValueError(f"`reward_guidance_scale` must be a finite number >= 1, got {value!r}")
    return float(value)
