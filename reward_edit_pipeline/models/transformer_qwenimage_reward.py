"""`RewardQwenImageTransformer2DModel`: Qwen-Image(-Edit)'s MMDiT with multi-reward conditioning.

The base `QwenImageTransformer2DModel` is kept unchanged (same submodules, same checkpoint keys, so base weights and
Qwen-Image LoRAs load as they are); the reward modules live under new prefixes:

- ``reward_conditioner.*``: a `RewardConditioner` (scores + pooled failure text → global vector, 2 reward tokens);
- ``reward_attention.<block>.*``: per block, key/value projections of the reward tokens (`QwenRewardAttention`).

Where the two outputs enter:

- **global path**: the global vector is added to the output of `time_text_embed` (`QwenTimestepProjEmbeddings`).
  Under `zero_cond_t` (Qwen-Image-Edit-2511) that embedding has 2B rows (noisy-target timestep, then t=0 for the
  reference images); the reward vector is added to both halves. With the conditioner's zero-initialised last layers the
  sum is exactly the base embedding.
- **token path**: a gated decoupled attention. In every block the image-stream queries (after QK-norm, before RoPE:
  the reward tokens have no position) attend to the 2 reward tokens through the block's own `QwenRewardAttention`
  keys/values; the result is added to the image part of the joint attention output before `to_out`, IP-Adapter style.
  The value projection is zero-initialised, so at init the added term is exactly 0 and the model equals the base
  bit for bit; the text stream never sees the reward tokens.

The reward inputs reach the model per call (nothing is stored on modules between calls): either as
``reward_scores``/``failure_text_embeds`` arguments of `forward` (training), or as a precomputed `RewardCondition` in
``attention_kwargs["reward_condition"]`` (the pipelines: conditions computed once per call, optionally with reward
guidance, which runs the requested and the null condition in one doubled batch). Each block's processor receives its
own `QwenRewardAttention` and the tokens as extra arguments.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ModelMixin, QwenImageTransformer2DModel  # noqa: F401  (diffusers' loader looks up ModelMixin here)
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_qwenimage import (
    apply_rotary_emb_qwen,
    compute_text_seq_len_from_mask,
)
from diffusers.utils import apply_lora_scale
from torch import nn

from ..rewards import DEFAULT_NO_FAILURE_TEXT, PERSPECTIVES
from .reward_dit_mixin import RewardDiTMixin, doubled_batch

# `QwenImageTransformer2DModel.__init__` arguments, copied when wrapping a base model.
_BASE_PARAMETERS: tuple[str, ...] = (
    "patch_size",
    "in_channels",
    "out_channels",
    "num_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "guidance_embeds",
    "axes_dims_rope",
    "zero_cond_t",
    "use_additional_t_cond",
    "use_layer3d_rope",
)


class QwenRewardAttention(nn.Module):
    """Key/value projections of the reward tokens for one block (zero-initialised values: exact at init)."""

    def __init__(self, token_dim: int, inner_dim: int, attention_head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.attention_head_dim = attention_head_dim
        self.to_k = nn.Linear(token_dim, inner_dim)
        self.to_v = nn.Linear(token_dim, inner_dim)
        self.norm_k = RMSNorm(attention_head_dim, eps=eps)
        nn.init.zeros_(self.to_v.weight)
        nn.init.zeros_(self.to_v.bias)

    def forward(self, query: torch.Tensor, reward_tokens: torch.Tensor) -> torch.Tensor:
        """`query` `[B, S, H, Dh]` (image stream, QK-normed) × `reward_tokens` `[B, T, token_dim]` → `[B, S, H·Dh]`."""
        reward_tokens = reward_tokens.to(self.to_k.weight.dtype)
        key = self.norm_k(self.to_k(reward_tokens).unflatten(-1, (-1, self.attention_head_dim)))
        value = self.to_v(reward_tokens).unflatten(-1, (-1, self.attention_head_dim))
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2).to(query.dtype), value.transpose(1, 2).to(query.dtype)
        )
        return out.transpose(1, 2).flatten(2, 3).to(query.dtype)


class QwenRewardDoubleStreamAttnProcessor:
    """Qwen's joint (text + image) attention plus the gated reward attention of the image stream.

    Same operations in the same order as diffusers' `QwenDoubleStreamAttnProcessor2_0` (so without reward tokens
    the result is the base processor's bit for bit), plus two optional arguments that
    `RewardQwenImageTransformer2DModel.forward` passes per block: `reward_tokens` `[B, T, token_dim]` and
    `reward_attention`, that block's `QwenRewardAttention` (registered under ``reward_attention.<block>``). The
    processor holds no state.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        reward_tokens: torch.Tensor | None = None,
        reward_attention: QwenRewardAttention | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (reward_tokens is None) != (reward_attention is None):
            raise ValueError("pass both `reward_tokens` and `reward_attention` to the reward processor, or neither")
        if encoder_hidden_states is None:
            raise ValueError("QwenRewardDoubleStreamAttnProcessor needs `encoder_hidden_states` (the text stream)")
        if attention_mask is not None:
            raise ValueError("pass `encoder_hidden_states_mask`, not `attention_mask`, to the Qwen joint attention")
        if encoder_hidden_states_mask is not None:
            image_mask = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.bool)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]

        head_dim = attn.inner_dim // attn.heads
        img_query = attn.to_q(hidden_states).unflatten(-1, (-1, head_dim))
        img_key = attn.to_k(hidden_states).unflatten(-1, (-1, head_dim))
        img_value = attn.to_v(hidden_states).unflatten(-1, (-1, head_dim))
        txt_query = attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
        txt_key = attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
        txt_value = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
        if attn.norm_q is not None:
            img_query = attn.norm_q(img_query)
        if attn.norm_k is not None:
            img_key = attn.norm_k(img_key)
        if attn.norm_added_q is not None:
            txt_query = attn.norm_added_q(txt_query)
        if attn.norm_added_k is not None:
            txt_key = attn.norm_added_k(txt_key)
        reward_query = img_query  # before RoPE: reward tokens are position-free

        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img_query = apply_rotary_emb_qwen(img_query, img_freqs, use_real=False)
            img_key = apply_rotary_emb_qwen(img_key, img_freqs, use_real=False)
            txt_query = apply_rotary_emb_qwen(txt_query, txt_freqs, use_real=False)
            txt_key = apply_rotary_emb_qwen(txt_key, txt_freqs, use_real=False)

        joint = dispatch_attention_fn(
            torch.cat([txt_query, img_query], dim=1),
            torch.cat([txt_key, img_key], dim=1),
            torch.cat([txt_value, img_value], dim=1),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        joint = joint.flatten(2, 3).to(img_query.dtype)
        seq_txt = encoder_hidden_states.shape[1]
        txt_attn_output, img_attn_output = joint[:, :seq_txt], joint[:, seq_txt:]
        if reward_tokens is not None:
            img_attn_output = img_attn_output + reward_attention(reward_query, reward_tokens)

        img_attn_output = attn.to_out[0](img_attn_output.contiguous())
        if len(attn.to_out) > 1:
            img_attn_output = attn.to_out[1](img_attn_output)
        txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
        return img_attn_output, txt_attn_output


class RewardQwenImageTransformer2DModel(RewardDiTMixin, QwenImageTransformer2DModel):
    r"""A `QwenImageTransformer2DModel` (Qwen-Image / -Edit / -Edit-2509 / -2511 layout) with multi-reward conditions.

    All parent arguments are accepted unchanged. Reward arguments:

    Args:
        failure_text_embed_dim (`int`, *optional*): width of the pooled failure-text embedding (the mean of the
            Qwen2.5-VL text encoder's last hidden states over the text's tokens). Defaults to `joint_attention_dim`
            (3584 for Qwen2.5-VL-7B).
        reward_num_scores (`int`, defaults to 3): following, preserving, quality.
        reward_sinusoid_dim (`int`, defaults to 256): sinusoidal features per score.
        reward_token_dim (`int`, defaults to 512): width of the two reward tokens (input of each block's reward
            key/value projections; narrower than the 3072-wide blocks to keep those 60 projections small).
        reward_init (`str`, defaults to `"zero"`): `"zero"` zero-initialises the last layer of the conditioner's global
            paths, so the wrapped model equals its base; `"default"` keeps PyTorch's initialisation there. The reward
            value projections start at zero either way.
        no_failure_text (`str`, defaults to `"None; None; None"`): the failure text meaning "no failure".
    """

    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "reward_conditioner"]
    _base_transformer_class = QwenImageTransformer2DModel
    _base_config_parameters = _BASE_PARAMETERS
    _reward_attention_class = QwenRewardAttention
    _reward_processor_class = QwenRewardDoubleStreamAttnProcessor
    _reward_kwargs_name = "attention_kwargs"
    _failure_text_encoder_name = "Qwen2.5-VL"

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 64,
        out_channels: int | None = 16,
        num_layers: int = 60,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 3584,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        zero_cond_t: bool = False,
        use_additional_t_cond: bool = False,
        use_layer3d_rope: bool = False,
        # --- reward conditioning ---
        failure_text_embed_dim: int | None = None,
        reward_num_scores: int = len(PERSPECTIVES),
        reward_sinusoid_dim: int = 256,
        reward_token_dim: int = 512,
        reward_init: str = "zero",
        no_failure_text: str = DEFAULT_NO_FAILURE_TEXT,
    ) -> None:
        super().__init__(
            patch_size=patch_size,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=axes_dims_rope,
            zero_cond_t=zero_cond_t,
            use_additional_t_cond=use_additional_t_cond,
            use_layer3d_rope=use_layer3d_rope,
        )
        self._init_reward_config(reward_init, failure_text_embed_dim, default_embed_dim=joint_attention_dim)

    def _share_unregistered_tensors(self, transformer: QwenImageTransformer2DModel) -> None:
        # RoPE tables are plain tensor attributes (not buffers), so the meta-built ones hold no data: share the base's.
        self.pos_embed = transformer.pos_embed

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        encoder_hidden_states_mask: torch.Tensor = None,
        timestep: torch.LongTensor = None,
        img_shapes: list[tuple[int, int, int]] | None = None,
        guidance: torch.Tensor = None,
        attention_kwargs: dict[str, Any] | None = None,
        controlnet_block_samples: list[torch.Tensor] | None = None,
        additional_t_cond: torch.Tensor | None = None,
        return_dict: bool = True,
        reward_scores: torch.Tensor | None = None,
        failure_text_embeds: torch.Tensor | None = None,
        null_reward_mask: torch.Tensor | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """`QwenImageTransformer2DModel.forward` with reward conditions.

        Give the reward condition either as `reward_scores` `[B, 3]` + `failure_text_embeds` `[B, D]` (+ optional
        `null_reward_mask` `[B]`), or as a `RewardCondition` in `attention_kwargs["reward_condition"]` (precomputed
        embeddings, optionally with reward guidance). Other arguments: as in the parent.
        """
        batch = hidden_states.shape[0]
        condition, attention_kwargs = self._resolve_reward_condition(
            attention_kwargs, reward_scores, failure_text_embeds, null_reward_mask, batch
        )
        global_embedding, reward_tokens = self._reward_inputs(condition, batch)
        if condition.guidance_scale <= 1.0:
            return self._forward_rewarded(
                global_embedding,
                reward_tokens,
                hidden_states,
                encoder_hidden_states,
                encoder_hidden_states_mask,
                timestep,
                img_shapes,
                guidance,
                attention_kwargs,
                controlnet_block_samples,
                additional_t_cond,
                return_dict,
            )
        # Reward guidance: the same inputs with the requested and with the null reward condition in one batch.
        self._check_guidance_without_controlnet(controlnet_block_samples)
        output = self._forward_rewarded(
            global_embedding,
            reward_tokens,
            doubled_batch(hidden_states),
            doubled_batch(encoder_hidden_states),
            doubled_batch(encoder_hidden_states_mask),
            doubled_batch(timestep),
            None if img_shapes is None else list(img_shapes) * 2,
            doubled_batch(guidance),
            attention_kwargs,
            None,
            doubled_batch(additional_t_cond),
            False,
        )[0]
        return self._combine_guided_output(output, condition, return_dict)

    def _forward_rewarded(
        self,
        global_embedding: torch.Tensor,
        reward_tokens: torch.Tensor,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor | None,
        timestep: torch.Tensor,
        img_shapes: list | None,
        guidance: torch.Tensor | None,
        attention_kwargs: dict[str, Any],
        controlnet_block_samples: list[torch.Tensor] | None,
        additional_t_cond: torch.Tensor | None,
        return_dict: bool,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """The parent's forward with `global_embedding` `[B, inner_dim]` added to the timestep embedding and
        `reward_tokens` `[B, T, token_dim]` attended by every block's image stream."""
        hidden_states = self.img_in(hidden_states)
        timestep = timestep.to(hidden_states.dtype)
        modulate_index = None
        if self.zero_cond_t:  # second half of the modulation rows: t = 0 for the reference-image tokens
            timestep = torch.cat([timestep, timestep * 0], dim=0)
            modulate_index = torch.tensor(
                [[0] * prod(sample[0]) + [1] * sum(prod(shape) for shape in sample[1:]) for sample in img_shapes],
                device=timestep.device,
                dtype=torch.int,
            )

        encoder_hidden_states = self.txt_in(self.txt_norm(encoder_hidden_states))
        text_seq_len, _, encoder_hidden_states_mask = compute_text_seq_len_from_mask(
            encoder_hidden_states, encoder_hidden_states_mask
        )
        if guidance is None:
            temb = self.time_text_embed(timestep, hidden_states, additional_t_cond)
        else:
            guidance = guidance.to(hidden_states.dtype) * 1000
            temb = self.time_text_embed(timestep, guidance, hidden_states, additional_t_cond)
        global_embedding = global_embedding.to(temb.dtype)
        if self.zero_cond_t:  # temb has 2B rows (target timestep, then t = 0): the reward applies to both halves
            global_embedding = global_embedding.repeat(2, 1)
        temb = temb + global_embedding
        reward_tokens = reward_tokens.to(hidden_states.dtype)

        image_rotary_emb = self.pos_embed(img_shapes, max_txt_seq_len=text_seq_len, device=hidden_states.device)

        for index_block, block in enumerate(self.transformer_blocks):
            block_kwargs = {
                **attention_kwargs,
                "reward_tokens": reward_tokens,
                "reward_attention": self.reward_attention[index_block],
            }
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block,
                    hidden_states,
                    encoder_hidden_states,
                    encoder_hidden_states_mask,
                    temb,
                    image_rotary_emb,
                    block_kwargs,
                    modulate_index,
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    encoder_hidden_states_mask=encoder_hidden_states_mask,
                    temb=temb,
                    image_rotary_emb=image_rotary_emb,
                    joint_attention_kwargs=block_kwargs,
                    modulate_index=modulate_index,
                )
            if controlnet_block_samples is not None:
                interval = int(np.ceil(len(self.transformer_blocks) / len(controlnet_block_samples)))
                hidden_states = hidden_states + controlnet_block_samples[index_block // interval]

        if self.zero_cond_t:
            temb = temb.chunk(2, dim=0)[0]
        output = self.proj_out(self.norm_out(hidden_states, temb))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
