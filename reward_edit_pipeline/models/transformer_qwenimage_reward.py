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

The reward condition travels with the call (`attention_kwargs["reward_condition"]`, a `QwenRewardCondition`) and
reaches the attention processors as an argument; nothing is stored on modules between calls. Without a reward
condition the model is the base model (plus no extra work).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_qwenimage import (
    QwenImageTransformer2DModel,
    apply_rotary_emb_qwen,
    compute_text_seq_len_from_mask,
)
from diffusers.utils import apply_lora_scale
from torch import nn

from ..rewards import DEFAULT_NO_FAILURE_TEXT
from .reward_conditioner import RewardConditionEmbeddings, RewardConditioner

REWARD_CONDITION_KEY = "reward_condition"


@dataclass
class QwenRewardCondition:
    """The reward condition of one transformer call, passed as `attention_kwargs["reward_condition"]`.

    Attributes:
        reward_scores (`torch.Tensor` of shape `[B, 3]`): validated scores (following, preserving, quality).
        failure_text_embeds (`torch.Tensor` of shape `[B, failure_text_embed_dim]`): pooled failure-text embeddings.
        null_reward_mask (`torch.BoolTensor` of shape `[B]`, *optional*): rows that get the null reward condition.
        embeddings (`RewardConditionEmbeddings`, *optional*): the conditioner's output, when already computed (the
            pipeline embeds the condition once per call); takes precedence over the raw inputs.

    `B` is the batch of `hidden_states`, or 1 (broadcast to the batch).
    """

    reward_scores: torch.Tensor | None = None
    failure_text_embeds: torch.Tensor | None = None
    null_reward_mask: torch.Tensor | None = None
    embeddings: RewardConditionEmbeddings | None = None


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
        key = self.norm_k(self.to_k(reward_tokens).unflatten(-1, (-1, self.attention_head_dim)))
        value = self.to_v(reward_tokens).unflatten(-1, (-1, self.attention_head_dim))
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2).to(query.dtype), value.transpose(1, 2).to(query.dtype)
        )
        return out.transpose(1, 2).flatten(2, 3)


class QwenRewardDoubleStreamAttnProcessor:
    """Qwen's joint (text + image) attention plus the gated reward attention of the image stream.

    Same computation as diffusers' `QwenDoubleStreamAttnProcessor2_0` (written for this project), with one extra
    argument, `reward_tokens`; `None` (no reward condition) gives exactly the base processor's result. The processor
    holds a reference to its block's `QwenRewardAttention` (registered on the transformer under
    ``reward_attention.<block>``), never per-call data.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, reward_attention: QwenRewardAttention) -> None:
        self.reward_attention = reward_attention

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        reward_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
            img_attn_output = img_attn_output + self.reward_attention(reward_query, reward_tokens)

        img_attn_output = attn.to_out[0](img_attn_output.contiguous())
        if len(attn.to_out) > 1:
            img_attn_output = attn.to_out[1](img_attn_output)
        txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
        return img_attn_output, txt_attn_output


class RewardQwenImageTransformer2DModel(QwenImageTransformer2DModel):
    r"""`QwenImageTransformer2DModel` + reward conditioning (see the module docstring).

    Args (beyond the base model's):
        failure_text_embed_dim (`int`, defaults to 3584): width of the pooled failure-text embedding (the Qwen2.5-VL
            text encoder's hidden size; 3584 for Qwen2.5-VL-7B).
        reward_token_dim (`int`, defaults to 512): width of the two reward tokens (each block projects them to its
            keys/values; a narrower token keeps the per-block projections small).
        reward_sinusoid_dim (`int`, defaults to 256): sinusoidal features per score.
        no_failure_text (`str`): the failure text meaning "no failure" (`failure_text=None` in the pipeline).
    """

    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "reward_conditioner"]

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
        failure_text_embed_dim: int = 3584,
        reward_token_dim: int = 512,
        reward_sinusoid_dim: int = 256,
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
        self.reward_conditioner = RewardConditioner(
            text_embed_dim=failure_text_embed_dim,
            global_dim=self.inner_dim,
            token_dim=reward_token_dim,
            sinusoid_dim=reward_sinusoid_dim,
            reward_init="zero",
        )
        self.reward_attention = nn.ModuleList(
            [QwenRewardAttention(reward_token_dim, self.inner_dim, attention_head_dim) for _ in range(num_layers)]
        )
        self.set_reward_attn_processors()

    def set_reward_attn_processors(self) -> None:
        """(Re)install the reward-aware processor in every block (after `set_attn_processor`, for example)."""
        for block, reward_attention in zip(self.transformer_blocks, self.reward_attention):
            block.attn.set_processor(QwenRewardDoubleStreamAttnProcessor(reward_attention))

    @classmethod
    def from_base(
        cls, transformer: QwenImageTransformer2DModel, failure_text_embed_dim: int, **reward_config: Any
    ) -> RewardQwenImageTransformer2DModel:
        """Wrap a base transformer: same weights, zero-initialised reward modules (exactly the base model at init).

        The base weights are copied (`load_state_dict`); the result has the base model's dtype and device.
        """
        if isinstance(transformer, cls):
            raise TypeError("the transformer already has reward conditioning")
        config = {key: value for key, value in transformer.config.items() if not key.startswith("_")}
        model = cls(**config, failure_text_embed_dim=failure_text_embed_dim, **reward_config)
        missing, unexpected = model.load_state_dict(transformer.state_dict(), strict=False)
        if unexpected or any(not key.startswith(("reward_conditioner.", "reward_attention.")) for key in missing):
            raise ValueError(f"base transformer does not match: missing {missing}, unexpected {unexpected}")
        parameter = next(transformer.parameters())
        if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
            model = model.to(device=parameter.device, dtype=parameter.dtype)
        return model.eval()

    def reward_parameters(self) -> list[nn.Parameter]:
        """Parameters of the reward modules (trained in full; the base stays frozen)."""
        return list(self.reward_conditioner.parameters()) + list(self.reward_attention.parameters())

    def embed_reward_condition(self, condition: QwenRewardCondition, batch_size: int) -> RewardConditionEmbeddings:
        """Run the conditioner (unless `condition.embeddings` is given) and broadcast to `batch_size` rows."""
        embeddings = condition.embeddings
        if embeddings is None:
            if condition.reward_scores is None or condition.failure_text_embeds is None:
                raise ValueError("`reward_condition` needs `reward_scores` and `failure_text_embeds` (or `embeddings`)")
            embeddings = self.reward_conditioner(
                condition.reward_scores, condition.failure_text_embeds, condition.null_reward_mask
            )
        rows = embeddings.global_embedding.shape[0]
        if rows == batch_size:
            return embeddings
        if rows != 1:
            raise ValueError(f"`reward_condition` has {rows} rows; expected 1 or the batch size {batch_size}")
        return RewardConditionEmbeddings(
            global_embedding=embeddings.global_embedding.expand(batch_size, -1),
            tokens=embeddings.tokens.expand(batch_size, -1, -1),
        )

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
        controlnet_block_samples=None,
        additional_t_cond=None,
        return_dict: bool = True,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """The base forward, plus `attention_kwargs["reward_condition"]` (a `QwenRewardCondition`, optional)."""
        attention_kwargs = dict(attention_kwargs or {})
        condition = attention_kwargs.pop(REWARD_CONDITION_KEY, None)
        if condition is not None and not isinstance(condition, (QwenRewardCondition, RewardConditionEmbeddings)):
            raise TypeError(
                f"`attention_kwargs['{REWARD_CONDITION_KEY}']` must be a QwenRewardCondition, "
                f"got {type(condition).__name__}"
            )
        if isinstance(condition, RewardConditionEmbeddings):
            condition = QwenRewardCondition(embeddings=condition)

        batch_size = hidden_states.shape[0]
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

        if condition is not None:
            embeddings = self.embed_reward_condition(condition, batch_size)
            global_embedding = embeddings.global_embedding.to(temb.dtype)
            if self.zero_cond_t:
                global_embedding = global_embedding.repeat(2, 1)
            temb = temb + global_embedding
            attention_kwargs["reward_tokens"] = embeddings.tokens.to(hidden_states.dtype)

        image_rotary_emb = self.pos_embed(img_shapes, max_txt_seq_len=text_seq_len, device=hidden_states.device)

        for index_block, block in enumerate(self.transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block,
                    hidden_states,
                    encoder_hidden_states,
                    encoder_hidden_states_mask,
                    temb,
                    image_rotary_emb,
                    attention_kwargs,
                    modulate_index,
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    encoder_hidden_states_mask=encoder_hidden_states_mask,
                    temb=temb,
                    image_rotary_emb=image_rotary_emb,
                    joint_attention_kwargs=attention_kwargs,
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
