"""`RewardDiTMixin`: what the Flux and Qwen-Image reward transformers share.

Both wrap a diffusers DiT (`FluxTransformer2DModel`, `QwenImageTransformer2DModel`) with the same two reward modules,
under the same checkpoint prefixes:

- ``reward_conditioner.*``: one `RewardConditioner` (scores + pooled failure text → global vector, 2 reward tokens);
- ``reward_attention.{i}.*``: one backbone-specific reward attention module per double-stream block.

The mixin builds those modules, wraps a base model without copying its weights, resolves the per-call reward input
(`reward_scores`/`failure_text_embeds` or a precomputed `RewardCondition`) and prepares the (optionally
guidance-doubled) reward inputs. The backbone classes keep their own `__init__`, attention processor and
`_forward_rewarded` (the parent's forward with the reward inputs added).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .reward_conditioner import REWARD_INIT_CHOICES, RewardConditionEmbeddings, RewardConditioner
from .reward_dit_condition import RewardCondition, combine_reward_guidance

REWARD_CONDITION_KEY = "reward_condition"
REWARD_MODULE_PREFIXES: tuple[str, str] = ("reward_conditioner.", "reward_attention.")
# Reward arguments of the transformers' `__init__` that `from_transformer` accepts.
REWARD_CONFIG_PARAMETERS: tuple[str, ...] = (
    "failure_text_embed_dim",
    "reward_num_scores",
    "reward_sinusoid_dim",
    "reward_token_dim",
    "no_failure_text",
)


def doubled_batch(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor` repeated once along the batch dimension (`None` stays `None`): the reward-guidance batch."""
    return None if tensor is None else torch.cat([tensor, tensor])


class RewardDiTMixin:
    """Reward modules, wrapping and reward-input handling shared by the reward DiT transformers.

    Subclasses (which also inherit the diffusers base transformer) set:

    - `_base_transformer_class`: the diffusers transformer they extend;
    - `_base_config_parameters`: its `__init__` arguments copied by `from_transformer`;
    - `_reward_attention_class`: the per-block reward attention module, built as `(token_dim, inner_dim, head_dim)`;
    - `_reward_processor_class`: the attention processor of `transformer_blocks` that uses it;
    - `_reward_kwargs_name`: the name of `forward`'s attention-kwargs argument (in error messages);
    - `_failure_text_encoder_name`: how the failure text is embedded (in error messages).
    """

    _base_transformer_class: type
    _base_config_parameters: tuple[str, ...]
    _reward_attention_class: type[nn.Module]
    _reward_processor_class: type
    _reward_kwargs_name: str
    _failure_text_encoder_name: str

    def _init_reward_config(self, reward_init: str, failure_text_embed_dim: int | None, default_embed_dim: int) -> None:
        """Validate `reward_init`, default `failure_text_embed_dim` (recorded in the config) and build the modules."""
        if reward_init not in REWARD_INIT_CHOICES:
            raise ValueError(f"`reward_init` must be one of {REWARD_INIT_CHOICES}, got {reward_init!r}")
        if failure_text_embed_dim is None:
            self.register_to_config(failure_text_embed_dim=default_embed_dim)
        self._build_reward_modules(reward_init)

    def _build_reward_modules(self, reward_init: str) -> None:
        """(Re)create the reward modules (new parameters on the current default device) and the block processors."""
        config = self.config
        self.reward_conditioner = RewardConditioner(
            text_embed_dim=config.failure_text_embed_dim,
            global_dim=self.inner_dim,
            token_dim=config.reward_token_dim,
            num_scores=config.reward_num_scores,
            sinusoid_dim=config.reward_sinusoid_dim,
            reward_init=reward_init,
        )
        self.reward_attention = nn.ModuleList(
            [
                self._reward_attention_class(config.reward_token_dim, self.inner_dim, config.attention_head_dim)
                for _ in range(config.num_layers)
            ]
        )
        for block in self.transformer_blocks:
            block.attn.set_processor(self._reward_processor_class())

    def _share_unregistered_tensors(self, transformer: nn.Module) -> None:
        """Hook of `from_transformer`: take over tensors of `transformer` that its state dict does not hold."""

    @classmethod
    def from_transformer(cls, transformer: nn.Module, reward_init: str = "zero", **reward_config: Any) -> Any:
        """Wrap a plain base transformer with new reward modules.

        The base parameters are **shared** with `transformer` (no copy, no second allocation of a 12–20B model); the
        reward modules are created on its device and dtype. With `reward_init="zero"` the result computes exactly
        what `transformer` computes until it is trained.
        """
        if isinstance(transformer, cls):
            raise ValueError("`transformer` already has reward modules")
        base_class = cls._base_transformer_class
        if not isinstance(transformer, base_class):
            raise TypeError(f"`transformer` must be a {base_class.__name__}, got {type(transformer).__name__}")
        unknown = set(reward_config) - set(REWARD_CONFIG_PARAMETERS)
        if unknown:
            raise TypeError(
                f"unknown reward config arguments {sorted(unknown)}; accepted: {list(REWARD_CONFIG_PARAMETERS)}"
            )
        base_config = {
            name: transformer.config[name] for name in cls._base_config_parameters if name in transformer.config
        }
        with torch.device("meta"):
            model = cls(**base_config, reward_init=reward_init, **reward_config)
        missing, unexpected = model.load_state_dict(transformer.state_dict(), strict=False, assign=True)
        if unexpected or any(not name.startswith(REWARD_MODULE_PREFIXES) for name in missing):
            raise ValueError(f"state dict mismatch when wrapping: missing={missing}, unexpected={unexpected}")
        model._share_unregistered_tensors(transformer)
        parameter = next(transformer.parameters())
        with torch.device(parameter.device):
            model._build_reward_modules(reward_init)
        model.reward_conditioner.to(parameter.dtype)
        model.reward_attention.to(parameter.dtype)
        leftover = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
        if leftover:
            raise RuntimeError(f"tensors left on the meta device after wrapping: {leftover[:5]}")
        model.train(transformer.training)
        return model

    def reward_parameters(self) -> list[nn.Parameter]:
        """Parameters of the reward modules (trained in full)."""
        return [*self.reward_conditioner.parameters(), *self.reward_attention.parameters()]

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the reward modules: what the plain base transformer loads."""
        return {
            name: tensor for name, tensor in self.state_dict().items() if not name.startswith(REWARD_MODULE_PREFIXES)
        }

    def compute_reward_condition(
        self,
        reward_scores: torch.Tensor,
        failure_text_embeds: torch.Tensor,
        null_reward_mask: torch.Tensor | None = None,
    ) -> RewardConditionEmbeddings:
        """Run the conditioner on validated `[B, 3]` scores and `[B, D]` pooled failure-text embeddings."""
        return self.reward_conditioner(reward_scores, failure_text_embeds, null_reward_mask)

    def _resolve_reward_condition(
        self,
        attention_kwargs: dict[str, Any] | None,
        reward_scores: torch.Tensor | None,
        failure_text_embeds: torch.Tensor | None,
        null_reward_mask: torch.Tensor | None,
        batch: int,
    ) -> tuple[RewardCondition, dict[str, Any]]:
        """The call's `RewardCondition` and the attention kwargs without it.

        The condition comes either from `reward_scores` + `failure_text_embeds` (run through the conditioner) or from
        `attention_kwargs["reward_condition"]`; exactly one must be given. Also checks that every block still uses the
        reward processor and that the condition has 1 or `batch` rows.
        """
        kwargs_name = self._reward_kwargs_name
        attention_kwargs = dict(attention_kwargs or {})
        condition = attention_kwargs.pop(REWARD_CONDITION_KEY, None)
        if condition is not None and reward_scores is not None:
            raise ValueError("pass either `reward_scores`/`failure_text_embeds` or a `reward_condition`, not both")
        if condition is None:
            if reward_scores is None or failure_text_embeds is None:
                raise ValueError(
                    f"{type(self).__name__} needs a reward condition: `reward_scores` [batch, "
                    f"{self.config.reward_num_scores}] and `failure_text_embeds` [batch, "
                    f"{self.config.failure_text_embed_dim}] (pooled {self._failure_text_encoder_name} embedding of the "
                    f"failure text; no failure: {self.config.no_failure_text!r}), or "
                    f"{kwargs_name}['{REWARD_CONDITION_KEY}']"
                )
            condition = RewardCondition(self.reward_conditioner(reward_scores, failure_text_embeds, null_reward_mask))
        elif not isinstance(condition, RewardCondition):
            raise TypeError(
                f"{kwargs_name}['{REWARD_CONDITION_KEY}'] must be a RewardCondition, got {type(condition).__name__}"
            )
        processor_class = self._reward_processor_class
        for index, block in enumerate(self.transformer_blocks):
            if not isinstance(block.attn.processor, processor_class):
                raise ValueError(
                    f"transformer_blocks[{index}] uses {type(block.attn.processor).__name__}; the reward tokens need "
                    f"{processor_class.__name__} (set_attn_processor / fuse_qkv_projections replaced it)"
                )
        for name, embeddings in (("embeddings", condition.embeddings), ("null_embeddings", condition.null_embeddings)):
            rows = None if embeddings is None else embeddings.global_embedding.shape[0]
            if rows not in (None, 1, batch):
                raise ValueError(f"reward condition {name} has {rows} rows for a batch of {batch} (give 1 or {batch})")
        return condition, attention_kwargs

    @staticmethod
    def _reward_inputs(condition: RewardCondition, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(global_embedding [B', inner_dim], reward_tokens [B', T, token_dim])` for a batch of `batch`: `B' = batch`
        without reward guidance; with it `B' = 2·batch`, the requested condition first, then the null condition."""
        embeddings = condition.embeddings
        global_embedding = embeddings.global_embedding.expand(batch, -1)
        tokens = embeddings.tokens.expand(batch, -1, -1)
        if condition.guidance_scale <= 1.0:
            return global_embedding, tokens
        null = condition.null_embeddings
        return (
            torch.cat([global_embedding, null.global_embedding.expand(batch, -1)]),
            torch.cat([tokens, null.tokens.expand(batch, -1, -1)]),
        )

    @staticmethod
    def _combine_guided_output(
        output: torch.Tensor, condition: RewardCondition, return_dict: bool
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Reward guidance over a doubled-batch `output` (requested condition first, then null)."""
        conditioned, unconditioned = output.chunk(2)
        output = combine_reward_guidance(conditioned, unconditioned, condition.guidance_scale)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    @staticmethod
    def _check_guidance_without_controlnet(*controlnet_samples: Any) -> None:
        """Reward guidance doubles the batch, which ControlNet residuals do not follow."""
        if any(samples is not None for samples in controlnet_samples):
            raise ValueError(
                "reward guidance (`guidance_scale` > 1 in the reward condition) does not support ControlNet"
            )
