"""`RewardFluxTransformer2DModel`: FLUX.1 (Kontext) transformer with multi-reward conditions (Gu et al., ICLR 2025).

The base `FluxTransformer2DModel` is kept whole (same module names, so base checkpoints, LoRAs and the base
config keep loading); the reward path lives under two new prefixes:

- ``reward_conditioner.*`` — one `RewardConditioner`: scores + pooled failure text → a global vector (added to
  ``temb``, the output of ``time_text_embed``) and two reward tokens.
- ``reward_attention.{i}.*`` — one `FluxRewardAttention` per double-stream block: the image-stream queries of that
  block attend to the reward tokens through their own key/value projections (IP-Adapter style, decoupled from the
  joint text/image attention) and the result is added, through a per-channel gate that starts at zero, to the
  image-stream attention output before ``to_out``.

With ``reward_init="zero"`` the global vector is exactly 0 and every gate is 0, so the wrapped model computes the
base model's output bit for bit. Appending the tokens to the text stream instead would change the joint softmax
even with zero-initialised tokens, which is why the token path is a separate gated attention.

The reward inputs reach the model per call (no state is stored on modules between calls): either as
``reward_scores``/``failure_text_embeds`` arguments of `forward` (training), or as a precomputed `RewardCondition`
in ``joint_attention_kwargs["reward_condition"]`` (the pipeline: conditions computed once per call). Each
double-stream block receives its own `FluxRewardAttention` module and the tokens as extra processor arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import FluxTransformer2DModel, ModelMixin  # noqa: F401  (diffusers' loader looks up ModelMixin here)
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale, logging
from torch import nn

from ..rewards import DEFAULT_NO_FAILURE_TEXT, PERSPECTIVES
from .reward_dit_mixin import RewardDiTMixin, doubled_batch

logger = logging.get_logger(__name__)

# `FluxTransformer2DModel.__init__` arguments, copied when wrapping a base model.
_BASE_PARAMETERS: tuple[str, ...] = (
    "patch_size",
    "in_channels",
    "out_channels",
    "num_layers",
    "num_single_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "pooled_projection_dim",
    "guidance_embeds",
    "axes_dims_rope",
)


class FluxRewardAttention(nn.Module):
    r"""Decoupled attention of one block's image-stream queries to the reward tokens, with a zero-initialised gate.

    Args:
        token_dim (`int`): width of the reward tokens.
        inner_dim (`int`): heads × head_dim of the block's attention.
        head_dim (`int`): width of one attention head.
        eps (`float`, defaults to 1e-6): epsilon of the RMS norm on the reward keys (as the block's `norm_k`).
    """

    def __init__(self, token_dim: int, inner_dim: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.reward_key = nn.Linear(token_dim, inner_dim)
        self.reward_value = nn.Linear(token_dim, inner_dim)
        self.reward_key_norm = nn.RMSNorm(head_dim, eps=eps)
        self.gate = nn.Parameter(torch.zeros(inner_dim))

    def forward(self, query: torch.Tensor, reward_tokens: torch.Tensor, backend: Any = None) -> torch.Tensor:
        """`query` `[B, N, heads, head_dim]` (normalised, before RoPE), `reward_tokens` `[B, T, token_dim]`
        → gated attention output `[B, N, heads·head_dim]` in `query`'s dtype."""
        weight_dtype = self.reward_key.weight.dtype
        reward_tokens = reward_tokens.to(weight_dtype)
        key = self.reward_key_norm(self.reward_key(reward_tokens).unflatten(-1, (-1, self.head_dim)))
        value = self.reward_value(reward_tokens).unflatten(-1, (-1, self.head_dim))
        output = dispatch_attention_fn(query, key.to(query.dtype), value.to(query.dtype), backend=backend)
        return output.flatten(2, 3).to(query.dtype) * self.gate.to(query.dtype)


class FluxRewardAttnProcessor:
    """`FluxAttnProcessor` for the double-stream blocks, plus the gated reward attention.

    The joint attention is computed exactly as diffusers' `FluxAttnProcessor` does (same operations, same order), so
    with a zero gate the output is the base output bit for bit. Extra arguments (passed by
    `RewardFluxTransformer2DModel.forward` through the block's `joint_attention_kwargs`): `reward_tokens`
    `[B, T, token_dim]` and `reward_attention`, the block's `FluxRewardAttention`. Without them it is the plain
    processor. It holds no state.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        reward_tokens: torch.Tensor | None = None,
        reward_attention: FluxRewardAttention | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if (reward_tokens is None) != (reward_attention is None):
            raise ValueError("FluxRewardAttnProcessor needs both `reward_tokens` and `reward_attention`, or neither")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        image_query = query

        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            if getattr(attn, "fused_projections", False):
                encoder_query, encoder_key, encoder_value = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                encoder_query = attn.add_q_proj(encoder_hidden_states)
                encoder_key = attn.add_k_proj(encoder_hidden_states)
                encoder_value = attn.add_v_proj(encoder_hidden_states)
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:  # single-stream use: no separate image stream to condition
            if reward_tokens is not None:
                raise ValueError("the reward tokens are attended by the image stream of double-stream blocks only")
            return hidden_states

        text_length = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [text_length, hidden_states.shape[1] - text_length], dim=1
        )
        if reward_tokens is not None:
            hidden_states = hidden_states + reward_attention(image_query, reward_tokens, self._attention_backend)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states


class RewardFluxTransformer2DModel(RewardDiTMixin, FluxTransformer2DModel):
    r"""A `FluxTransformer2DModel` (FLUX.1 [dev] / Kontext [dev] layout) with multi-reward conditions.

    All parent arguments are accepted unchanged. Reward arguments:

    Args:
        failure_text_embed_dim (`int`, *optional*): width of the pooled failure-text embedding (Flux embeds the
            failure text with its CLIP text encoder, pooled output: 768). Defaults to `pooled_projection_dim`.
        reward_num_scores (`int`, defaults to 3): following, preserving, quality.
        reward_sinusoid_dim (`int`, defaults to 256): sinusoidal features per score.
        reward_token_dim (`int`, defaults to 768): width of the two reward tokens (input of each block's reward
            key/value projections).
        reward_init (`str`, defaults to `"zero"`): `"zero"` zero-initialises the last layer of the conditioner's global
            paths, so the wrapped model equals its base; `"default"` keeps PyTorch's initialisation there. The
            reward-attention gates start at zero either way.
        no_failure_text (`str`, defaults to `"None; None; None"`): the failure text meaning "no failure".
    """

    _base_transformer_class = FluxTransformer2DModel
    _base_config_parameters = _BASE_PARAMETERS
    _reward_attention_class = FluxRewardAttention
    _reward_processor_class = FluxRewardAttnProcessor
    _reward_kwargs_name = "joint_attention_kwargs"
    _failure_text_encoder_name = "CLIP"

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        # --- reward conditioning ---
        failure_text_embed_dim: int | None = None,
        reward_num_scores: int = len(PERSPECTIVES),
        reward_sinusoid_dim: int = 256,
        reward_token_dim: int = 768,
        reward_init: str = "zero",
        no_failure_text: str = DEFAULT_NO_FAILURE_TEXT,
    ) -> None:
        super().__init__(
            patch_size=patch_size,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim,
            pooled_projection_dim=pooled_projection_dim,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=axes_dims_rope,
        )
        self._init_reward_config(reward_init, failure_text_embed_dim, default_embed_dim=pooled_projection_dim)

    @apply_lora_scale("joint_attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        pooled_projections: torch.Tensor = None,
        timestep: torch.Tensor = None,
        img_ids: torch.Tensor = None,
        txt_ids: torch.Tensor = None,
        guidance: torch.Tensor = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        controlnet_block_samples: list[torch.Tensor] | None = None,
        controlnet_single_block_samples: list[torch.Tensor] | None = None,
        return_dict: bool = True,
        controlnet_blocks_repeat: bool = False,
        reward_scores: torch.Tensor | None = None,
        failure_text_embeds: torch.Tensor | None = None,
        null_reward_mask: torch.Tensor | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """`FluxTransformer2DModel.forward` with reward conditions.

        Give the reward condition either as `reward_scores` `[B, 3]` + `failure_text_embeds` `[B, D]` (+ optional
        `null_reward_mask` `[B]`), or as a `RewardCondition` in `joint_attention_kwargs["reward_condition"]`
        (precomputed embeddings, optionally with reward guidance). Other arguments: as in the parent.
        """
        if joint_attention_kwargs and "ip_adapter_image_embeds" in joint_attention_kwargs:
            raise ValueError(f"{type(self).__name__} does not support IP-Adapter image embeddings")
        batch = hidden_states.shape[0]
        condition, attention_kwargs = self._resolve_reward_condition(
            joint_attention_kwargs, reward_scores, failure_text_embeds, null_reward_mask, batch
        )
        global_embedding, reward_tokens = self._reward_inputs(condition, batch)
        if condition.guidance_scale <= 1.0:
            return self._forward_rewarded(
                global_embedding,
                reward_tokens,
                hidden_states,
                encoder_hidden_states,
                pooled_projections,
                timestep,
                img_ids,
                txt_ids,
                guidance,
                attention_kwargs,
                controlnet_block_samples,
                controlnet_single_block_samples,
                controlnet_blocks_repeat,
                return_dict,
            )
        # Reward guidance: the same inputs with the requested and with the null reward condition in one batch.
        self._check_guidance_without_controlnet(controlnet_block_samples, controlnet_single_block_samples)
        output = self._forward_rewarded(
            global_embedding,
            reward_tokens,
            doubled_batch(hidden_states),
            doubled_batch(encoder_hidden_states),
            doubled_batch(pooled_projections),
            doubled_batch(timestep),
            img_ids,
            txt_ids,
            doubled_batch(guidance),
            attention_kwargs,
            None,
            None,
            False,
            False,
        )[0]
        return self._combine_guided_output(output, condition, return_dict)

    def _forward_rewarded(
        self,
        global_embedding: torch.Tensor,
        reward_tokens: torch.Tensor,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None,
        attention_kwargs: dict[str, Any],
        controlnet_block_samples: list[torch.Tensor] | None,
        controlnet_single_block_samples: list[torch.Tensor] | None,
        controlnet_blocks_repeat: bool,
        return_dict: bool,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """The parent's forward, with `global_embedding` added to `temb` and the reward tokens given to the
        double-stream blocks' processors."""
        hidden_states = self.x_embedder(hidden_states)
        timestep = timestep.to(hidden_states.dtype) * 1000
        if guidance is None:
            temb = self.time_text_embed(timestep, pooled_projections)
        else:
            temb = self.time_text_embed(timestep, guidance.to(hidden_states.dtype) * 1000, pooled_projections)
        temb = temb + global_embedding.to(temb.dtype)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)

        if txt_ids.ndim == 3:
            txt_ids = txt_ids[0]
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        image_rotary_emb = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        for index, block in enumerate(self.transformer_blocks):
            block_kwargs = {
                **attention_kwargs,
                "reward_tokens": reward_tokens,
                "reward_attention": self.reward_attention[index],
            }
            if checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, temb, image_rotary_emb, block_kwargs
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    temb=temb,
                    image_rotary_emb=image_rotary_emb,
                    joint_attention_kwargs=block_kwargs,
                )
            if controlnet_block_samples is not None:
                if controlnet_blocks_repeat:
                    residual = controlnet_block_samples[index % len(controlnet_block_samples)]
                else:
                    interval = int(np.ceil(len(self.transformer_blocks) / len(controlnet_block_samples)))
                    residual = controlnet_block_samples[index // interval]
                hidden_states = hidden_states + residual

        for index, block in enumerate(self.single_transformer_blocks):
            if checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_kwargs
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    temb=temb,
                    image_rotary_emb=image_rotary_emb,
                    joint_attention_kwargs=attention_kwargs,
                )
            if controlnet_single_block_samples is not None:
                interval = int(np.ceil(len(self.single_transformer_blocks) / len(controlnet_single_block_samples)))
                hidden_states = hidden_states + controlnet_single_block_samples[index // interval]

        output = self.proj_out(self.norm_out(hidden_states, temb))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
