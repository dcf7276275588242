"""`RewardConditioner`: the backbone-independent part of multi-reward conditioning (Gu et al., ICLR 2025).

It turns per-perspective reward scores and the pooled embedding of the failure text into

- a **global vector** that a backbone adds to its timestep (modulation) embedding, and
- two **reward tokens** (one from the scores, one from the failure text) that the backbone attends to.

::

    reward_scores [B,3] ──Timesteps(sinusoid_dim)×3──► features [B, 3·sinusoid_dim] ─┬─ reward_time_embedding ──┐
    failure_text_embeds [B, text_embed_dim] ──────────────────────────────────────────┼─ failure_text_time_proj ─┴─► global [B, global_dim]
                                                                                      ├─ reward_token_embedding ──┐
                                                                                      └─ failure_text_token_proj ─┴─► tokens [B, 2, token_dim]

Each backbone (the SD UNet, FLUX.1 Kontext, Qwen-Image-Edit) owns one `RewardConditioner` and decides where the two
outputs enter; the conditioner knows nothing of the backbone. The null condition (reward-condition dropout in
training, the unconditional branch of reward guidance) is a zero feature vector and a zero text embedding: a point no
real score reaches, since every real score's sinusoid has cos² + sin² = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..rewards import PERSPECTIVES

REWARD_INIT_CHOICES: tuple[str, ...] = ("zero", "default")


@dataclass
class RewardConditionEmbeddings:
    """What a `RewardConditioner` produces for one batch.

    Attributes:
        global_embedding (`torch.Tensor` of shape `[B, global_dim]`): added to the backbone's timestep embedding.
        tokens (`torch.Tensor` of shape `[B, 2, token_dim]`): the reward token and the failure-text token.
    """

    global_embedding: torch.Tensor
    tokens: torch.Tensor


class RewardConditioner(nn.Module):
    r"""Reward scores + failure-text embedding → global vector and reward tokens.

    Args:
        text_embed_dim (`int`): width of the pooled failure-text embedding (768 for SD1.5's CLIP ViT-L).
        global_dim (`int`): width of the backbone's timestep embedding.
        token_dim (`int`): width of the reward tokens (the features that attend to them).
        num_scores (`int`, defaults to 3): following, preserving, quality.
        sinusoid_dim (`int`, defaults to 256): sinusoidal features per score.
        reward_init (`str`, defaults to `"zero"`): `"zero"` zero-initialises the last layer of both global paths
            (`reward_time_embedding.linear_2`, `failure_text_time_proj`), so the global vector starts at exactly 0;
            `"default"` keeps PyTorch's initialisation (the official code).

    Submodule names are part of the checkpoint format (the official UNet's `add_embedding`, `add_embedding2`,
    `text_linear2` and `text_linear` map onto them one to one).
    """

    def __init__(
        self,
        text_embed_dim: int,
        global_dim: int,
        token_dim: int,
        num_scores: int = len(PERSPECTIVES),
        sinusoid_dim: int = 256,
        reward_init: str = "zero",
    ) -> None:
        super().__init__()
        if reward_init not in REWARD_INIT_CHOICES:
            raise ValueError(f"`reward_init` must be one of {REWARD_INIT_CHOICES}, got {reward_init!r}")
        for name, value in (
            ("text_embed_dim", text_embed_dim),
            ("global_dim", global_dim),
            ("token_dim", token_dim),
            ("num_scores", num_scores),
            ("sinusoid_dim", sinusoid_dim),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if sinusoid_dim % 2:
            raise ValueError(f"`sinusoid_dim` must be even (sin and cos halves), got {sinusoid_dim}")
        self.num_scores = num_scores
        self.text_embed_dim = text_embed_dim
        features_dim = num_scores * sinusoid_dim
        self.reward_sinusoid = Timesteps(sinusoid_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.reward_time_embedding = TimestepEmbedding(features_dim, global_dim)
        self.reward_token_embedding = TimestepEmbedding(features_dim, token_dim)
        self.failure_text_time_proj = nn.Linear(text_embed_dim, global_dim)
        self.failure_text_token_proj = nn.Linear(text_embed_dim, token_dim)
        if reward_init == "zero":
            for module in (self.reward_time_embedding.linear_2, self.failure_text_time_proj):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def score_features(self, reward_scores: torch.Tensor) -> torch.Tensor:
        """`[B, num_scores]` scores → `[B, num_scores · sinusoid_dim]` sinusoidal features (computed in float32)."""
        batch = reward_scores.shape[0]
        return self.reward_sinusoid(reward_scores.reshape(-1)).reshape(batch, -1)

    def forward(
        self,
        reward_scores: torch.Tensor,
        failure_text_embeds: torch.Tensor,
        null_reward_mask: torch.Tensor | None = None,
    ) -> RewardConditionEmbeddings:
        """Embed validated inputs.

        Args:
            reward_scores (`torch.Tensor` of shape `[B, num_scores]`): scores in [0, 5] (validated by the caller).
            failure_text_embeds (`torch.Tensor` of shape `[B, text_embed_dim]`): pooled failure-text embeddings.
            null_reward_mask (`torch.BoolTensor` of shape `[B]`, *optional*): rows that get the null condition.
        """
        if reward_scores.ndim != 2 or reward_scores.shape[1] != self.num_scores:
            raise ValueError(
                f"`reward_scores` must have shape [B, {self.num_scores}], got {tuple(reward_scores.shape)}"
            )
        if failure_text_embeds.shape != (reward_scores.shape[0], self.text_embed_dim):
            raise ValueError(
                f"`failure_text_embeds` must have shape [{reward_scores.shape[0]}, {self.text_embed_dim}], "
                f"got {tuple(failure_text_embeds.shape)}"
            )
        dtype = self.reward_time_embedding.linear_1.weight.dtype
        features = self.score_features(reward_scores).to(dtype)
        failure_text_embeds = failure_text_embeds.to(dtype)
        if null_reward_mask is not None:
            keep = (~null_reward_mask).to(dtype).unsqueeze(-1)
            features = features * keep
            failure_text_embeds = failure_text_embeds * keep
        global_embedding = self.reward_time_embedding(features) + self.failure_text_time_proj(failure_text_embeds)
        tokens = torch.stack(
            [self.reward_token_embedding(features), self.failure_text_token_proj(failure_text_embeds)], dim=1
        )
        return RewardConditionEmbeddings(global_embedding=global_embedding, tokens=tokens)
