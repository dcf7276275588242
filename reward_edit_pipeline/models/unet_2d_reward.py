"""`RewardUNet2DConditionModel`: an InstructPix2Pix UNet conditioned on multi-perspective rewards.

Where the rewards enter (Gu et al., ICLR 2025). The official release (`bytedance/Multi-Reward-Editing`) adds four
modules to SD1.5's UNet (`add_embedding`, `add_embedding2`, `text_linear2`, `text_linear`) plus a latent
cross-attention right after `conv_in` (`proj_deal`, `ca`); `OFFICIAL_TO_OURS_PREFIXES` maps their keys onto ours:

    reward_scores [B,3] ─┐                 ┌─ global_embedding [B, time_embed_dim] ─► + timestep embedding
                         ├─ RewardConditioner ┤                                        (every resnet's temb)
    failure_text_embeds ─┘                 └─ tokens [B, 2, conv_in width]
    sample ─► conv_in ─► x0 ─► x0 + LatentRewardAttention(x0, tokens) ─► down blocks → mid → up → conv_out

Both additions happen inside `RewardUNet2DConditionModel.forward` itself: no hook and no per-call state on the module,
so one instance may serve several threads at once and `torch.compile` sees one plain graph. The reward condition
does not depend on the timestep: a sampler computes it once (`compute_reward_condition`) and passes it to every step
(`forward(..., reward_condition=...)`).

The class subclasses diffusers' `UNet2DConditionModel`, so attention processors, gradient checkpointing, LoRA/PEFT and
`from_pretrained`/`save_pretrained` keep working. All widths come from the config.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401  (diffusers' loader looks up ModelMixin here)
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from diffusers.utils import apply_lora_scale, deprecate, logging
from safetensors.torch import load_file, save_file
from torch import nn

from ..rewards import DEFAULT_NO_FAILURE_TEXT, PERSPECTIVES
from .reward_conditioner import REWARD_INIT_CHOICES, RewardConditionEmbeddings, RewardConditioner

logger = logging.get_logger(__name__)

# Official (bytedance/Multi-Reward-Editing) state-dict prefixes → ours. Everything else is stock diffusers.
OFFICIAL_TO_OURS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("add_embedding.", "reward_conditioner.reward_time_embedding."),
    ("add_embedding2.", "reward_conditioner.reward_token_embedding."),
    ("text_linear2.", "reward_conditioner.failure_text_time_proj."),
    ("text_linear.", "reward_conditioner.failure_text_token_proj."),
    ("proj_deal.norm.", "latent_reward_attention.norm."),
    ("proj_deal.proj_in.", "latent_reward_attention.proj_in."),
    ("proj_deal.proj_out.", "latent_reward_attention.proj_out."),
    ("ca.attention.self.query.", "latent_reward_attention.to_q."),
    ("ca.attention.self.key.", "latent_reward_attention.to_k."),
    ("ca.attention.self.value.", "latent_reward_attention.to_v."),
    ("ca.attention.output.dense.", "latent_reward_attention.to_out."),
    ("ca.attention.output.LayerNorm.", "latent_reward_attention.attn_norm."),
    ("ca.hidden_intermediate.dense.", "latent_reward_attention.ff_in."),
    ("ca.output.dense.", "latent_reward_attention.ff_out."),
    ("ca.output.LayerNorm.", "latent_reward_attention.ff_norm."),
)
REWARD_MODULE_PREFIXES: tuple[str, ...] = ("reward_conditioner.", "latent_reward_attention.")
# Key names of checkpoints saved before the conditioner became its own submodule (read transparently on load).
LEGACY_TO_CURRENT_PREFIXES: tuple[tuple[str, str], ...] = tuple(
    (name, "reward_conditioner." + name)
    for name in (
        "reward_time_embedding.",
        "reward_token_embedding.",
        "failure_text_time_proj.",
        "failure_text_token_proj.",
    )
)
# The official code hard-codes these; a model must match them to be exported to the official layout.
OFFICIAL_REWARD_CONFIG: dict[str, Any] = {
    "reward_sinusoid_dim": 256,
    "reward_attention_heads": 8,
    "reward_attention_norm_groups": 32,
    "reward_attention_norm_eps": 1e-6,
    "reward_attention_layer_norm_eps": 1e-12,
}


def _rename_keys(state_dict: dict[str, torch.Tensor], prefixes: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in prefixes:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def official_to_reward_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official UNet state dict to `RewardUNet2DConditionModel` keys."""
    return _rename_keys(state_dict, OFFICIAL_TO_OURS_PREFIXES)


def reward_to_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `RewardUNet2DConditionModel` state dict to the official key names."""
    return _rename_keys(state_dict, tuple((new, old) for old, new in OFFICIAL_TO_OURS_PREFIXES))


class LatentRewardAttention(nn.Module):
    r"""Cross-attention from every latent position to the reward and failure-text tokens.

    GroupNorm → 1×1 conv (`proj_in`) → BERT-style post-LayerNorm cross-attention (queries: the spatial tokens, keys and
    values: the condition tokens) + feed-forward → 1×1 conv (`proj_out`). The caller adds the result to its input.

    With only a handful of condition tokens, the query projection is folded into the keys and the output projection
    into the values (exact algebra): per spatial token this saves two of the six `channels × channels` products.

    Args:
        channels (`int`): width of the latent features (the UNet's `conv_in` output).
        num_heads (`int`): attention heads; must divide `channels`.
        ff_dim (`int`): width of the feed-forward's hidden layer.
        norm_num_groups (`int`), norm_eps (`float`): the input GroupNorm.
        layer_norm_eps (`float`): the two post-attention LayerNorms.
        dropout (`float`): dropout on attention probabilities and on both residual branches (training only).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        ff_dim: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"`reward_attention_heads` ({num_heads}) must divide the conv_in width ({channels})")
        if channels % norm_num_groups != 0:
            raise ValueError(
                f"`reward_attention_norm_groups` ({norm_num_groups}) must divide the conv_in width ({channels})"
            )
        ff_dim = channels if ff_dim is None else ff_dim
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.dropout = dropout
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=norm_eps, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)
        self.attn_norm = nn.LayerNorm(channels, eps=layer_norm_eps)
        self.ff_in = nn.Linear(channels, ff_dim)
        self.ff_out = nn.Linear(ff_dim, channels)
        self.ff_norm = nn.LayerNorm(channels, eps=layer_norm_eps)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def attend(self, query_tokens: torch.Tensor, condition_tokens: torch.Tensor) -> torch.Tensor:
        """`to_out(softmax(to_q(q) to_k(c)ᵀ / √d) to_v(c))` per head, computed with the folded projections.

        query_tokens: `[B, N, C]`; condition_tokens: `[B, T, C]`; returns `[B, N, C]`.
        When `to_q` or `to_out` is wrapped (e.g. by a PEFT LoRA layer), the projections are called as modules
        instead, so the wrapper takes effect.
        """
        if type(self.to_q) is not nn.Linear or type(self.to_out) is not nn.Linear:
            return self._attend_unfolded(query_tokens, condition_tokens)
        batch, num_tokens, channels = condition_tokens.shape
        heads, head_dim = self.num_heads, self.head_dim
        scale = 1.0 / math.sqrt(head_dim)
        keys = self.to_k(condition_tokens).view(batch, num_tokens, heads, head_dim)
        values = self.to_v(condition_tokens).view(batch, num_tokens, heads, head_dim)
        query_weight = self.to_q.weight.view(heads, head_dim, channels)
        # logits[b, n, (h, t)] = q[b, n] · (W_q,hᵀ k[b, t, h]) / √d + b_q,h · k[b, t, h] / √d
        folded_keys = torch.einsum("hdc,bthd->bcht", query_weight, keys).reshape(batch, channels, heads * num_tokens)
        folded_bias = torch.einsum("hd,bthd->bht", self.to_q.bias.view(heads, head_dim), keys)
        logits = torch.baddbmm(
            folded_bias.reshape(batch, 1, heads * num_tokens), query_tokens, folded_keys, alpha=scale, beta=scale
        )
        logits = logits.view(batch, -1, heads, num_tokens)
        if num_tokens == 2:  # softmax over two keys is a sigmoid of their difference (much faster on CPU)
            difference = logits[..., 0] - logits[..., 1]
            probs = torch.stack([torch.sigmoid(difference), torch.sigmoid(-difference)], dim=-1)
        else:
            probs = logits.softmax(dim=-1)
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        # out[b, n] = Σ_(h,t) p[b, n, h, t] · (v[b, t, h] W_o,hᵀ) + b_o
        output_weight = self.to_out.weight.view(channels, heads, head_dim)
        folded_values = torch.einsum("bthd,chd->bhtc", values, output_weight).reshape(
            batch, heads * num_tokens, channels
        )
        return torch.baddbmm(self.to_out.bias, probs.reshape(batch, -1, heads * num_tokens), folded_values)

    def _attend_unfolded(self, query_tokens: torch.Tensor, condition_tokens: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, channels = condition_tokens.shape
        heads, head_dim = self.num_heads, self.head_dim
        queries = self.to_q(query_tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        keys = self.to_k(condition_tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
        values = self.to_v(condition_tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
        probs = (queries @ keys.transpose(-1, -2) / math.sqrt(head_dim)).softmax(dim=-1)
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        context = (probs @ values).transpose(1, 2).reshape(batch, -1, channels)
        return self.to_out(context)

    def _pointwise_conv(self, conv: nn.Module, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A 1×1 convolution applied to `[B, H·W, C]` tokens: as a linear layer for a plain `nn.Conv2d` (same weights
        and maths, faster on CPU); as a module call on the image layout when it is wrapped (e.g. by LoRA)."""
        batch, _, channels = tokens.shape
        if type(conv) is nn.Conv2d:
            return F.linear(tokens, conv.weight.view(conv.out_channels, channels), conv.bias)
        image = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        return conv(image).flatten(2).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, condition_tokens: torch.Tensor) -> torch.Tensor:
        """hidden_states: `[B, C, H, W]`; condition_tokens: `[B, T, C]`; returns the residual `[B, C, H, W]`."""
        batch, channels, height, width = hidden_states.shape
        normed_tokens = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        query_tokens = self._pointwise_conv(self.proj_in, normed_tokens, height, width)
        attended = F.dropout(self.attend(query_tokens, condition_tokens), p=self.dropout, training=self.training)
        attended = self.attn_norm(attended + query_tokens)
        feed_forward = self.ff_out(F.gelu(self.ff_in(attended)))
        feed_forward = F.dropout(feed_forward, p=self.dropout, training=self.training)
        output = self.ff_norm(feed_forward + attended)
        output = self._pointwise_conv(self.proj_out, output, height, width)
        return output.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class RewardUNet2DConditionModel(UNet2DConditionModel):
    r"""A `UNet2DConditionModel` with the multi-reward conditions of Gu et al. (ICLR 2025).

    All parent arguments are accepted unchanged (they are named one by one, so `from_config` round-trips them).
    Reward-specific arguments:

    Args:
        failure_text_embed_dim (`int`, *optional*):
            Width of the pooled text embedding of the failure text (the text encoder's projection width, 768 for
            SD1.5's CLIP ViT-L). Defaults to `cross_attention_dim`.
        reward_num_scores (`int`, defaults to 3): following, preserving, quality.
        reward_sinusoid_dim (`int`, defaults to 256): sinusoidal features per score.
        reward_attention_heads (`int`, defaults to 8): heads of the latent cross-attention.
        reward_attention_ff_dim (`int`, *optional*): feed-forward width; defaults to the conv_in width.
        reward_attention_norm_groups, reward_attention_norm_eps, reward_attention_layer_norm_eps: normalisation settings.
        reward_attention_dropout (`float`, defaults to 0.0): dropout inside the latent cross-attention (training only).
        reward_init (`str`, defaults to `"zero"`):
            `"zero"`: the output projection of every reward path starts at zero (`reward_conditioner`'s
            `reward_time_embedding.linear_2` and `failure_text_time_proj`, `latent_reward_attention.proj_out`), so a
            wrapped UNet equals its base model.
            `"default"`: PyTorch's default initialisation, as in the official code.
        no_failure_text (`str`, defaults to `"None; None; None"`):
            The failure text that means "no failure" for this model; pipelines use it when `failure_text=None`.

    Submodules: `reward_conditioner` ([`RewardConditioner`]: scores and failure text → global vector and tokens) and
    `latent_reward_attention` ([`LatentRewardAttention`]). Checkpoints that still use the flat names of earlier
    versions (`reward_time_embedding.*` at the top level) load unchanged.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int] = 1280,
        transformer_layers_per_block: int | tuple[int] | tuple[tuple] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int]] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int] = 8,
        num_attention_heads: int | tuple[int] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
        # --- reward conditioning ---
        failure_text_embed_dim: int | None = None,
        reward_num_scores: int = len(PERSPECTIVES),
        reward_sinusoid_dim: int = 256,
        reward_attention_heads: int = 8,
        reward_attention_ff_dim: int | None = None,
        reward_attention_norm_groups: int = 32,
        reward_attention_norm_eps: float = 1e-6,
        reward_attention_layer_norm_eps: float = 1e-12,
        reward_attention_dropout: float = 0.0,
        reward_init: str = "zero",
        no_failure_text: str = DEFAULT_NO_FAILURE_TEXT,
    ) -> None:
        base_arguments = {name: value for name, value in locals().items() if name in _BASE_PARAMETERS}
        super().__init__(**base_arguments)
        if reward_init not in REWARD_INIT_CHOICES:
            raise ValueError(f"`reward_init` must be one of {REWARD_INIT_CHOICES}, got {reward_init!r}")
        if class_embeddings_concat:
            raise ValueError(
                "`class_embeddings_concat=True` doubles the timestep-embedding width, which the reward embedding "
                "is added to; it is not supported by RewardUNet2DConditionModel"
            )
        if failure_text_embed_dim is None:
            if not isinstance(cross_attention_dim, int):
                raise ValueError("`failure_text_embed_dim` must be set when `cross_attention_dim` is not a single int")
            failure_text_embed_dim = cross_attention_dim
            self.register_to_config(failure_text_embed_dim=failure_text_embed_dim)
        latent_channels = block_out_channels[0]

        # Scores + failure text → (global vector added to the timestep embedding, 2 tokens for the latent attention).
        self.reward_conditioner = RewardConditioner(
            text_embed_dim=failure_text_embed_dim,
            global_dim=self.time_embedding.linear_2.out_features,
            token_dim=latent_channels,
            num_scores=reward_num_scores,
            sinusoid_dim=reward_sinusoid_dim,
            reward_init=reward_init,
        )
        # Cross-attention from the conv_in features to the two tokens; its output is added to the conv_in features.
        self.latent_reward_attention = LatentRewardAttention(
            latent_channels,
            num_heads=reward_attention_heads,
            ff_dim=reward_attention_ff_dim,
            norm_num_groups=reward_attention_norm_groups,
            norm_eps=reward_attention_norm_eps,
            layer_norm_eps=reward_attention_layer_norm_eps,
            dropout=reward_attention_dropout,
        )
        if reward_init == "zero":
            nn.init.zeros_(self.latent_reward_attention.proj_out.weight)
            nn.init.zeros_(self.latent_reward_attention.proj_out.bias)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys_hook)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, reward_init: str = "zero", **reward_config: Any):
        """Wrap a plain (InstructPix2Pix) `UNet2DConditionModel`: copy its config and weights, add reward modules.

        With `reward_init="zero"` the result computes exactly what `unet` computes, whatever the rewards.
        """
        if isinstance(unet, RewardUNet2DConditionModel):
            raise TypeError("`unet` is already a RewardUNet2DConditionModel; use it directly")
        unknown = set(reward_config) - set(_REWARD_PARAMETERS)
        if unknown:
            raise TypeError(f"unknown reward config arguments {sorted(unknown)}; accepted: {list(_REWARD_PARAMETERS)}")
        base_config = {name: unet.config[name] for name in _BASE_PARAMETERS if name in unet.config}
        model = cls(**base_config, reward_init=reward_init, **reward_config)
        result = model.load_state_dict(unet.state_dict(), strict=False)
        unexpected_missing = [key for key in result.missing_keys if not key.startswith(REWARD_MODULE_PREFIXES)]
        if result.unexpected_keys or unexpected_missing:
            raise ValueError(
                f"could not copy the base UNet: unexpected keys {result.unexpected_keys[:5]}, "
                f"missing keys {unexpected_missing[:5]}"
            )
        if model.dtype != unet.dtype:  # (only when needed: diffusers warns on every dtype cast)
            model = model.to(dtype=unet.dtype)
        return model.to(device=unet.device)

    @classmethod
    def from_official_unet(
        cls,
        path: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        allow_pickle: bool = False,
        **reward_config: Any,
    ) -> RewardUNet2DConditionModel:
        """Load a UNet folder saved by the official Multi-Reward-Editing code (`config.json` + weights with keys
        `add_embedding*`, `text_linear*`, `proj_deal.*`, `ca.*`), e.g. `stage2_reward_instruct_pix2pix/unet`.

        Weights are read from safetensors (single file or sharded). A pickle `.bin` file is refused unless
        `allow_pickle=True` (then read with `torch.load(weights_only=True)`).
        """
        folder = os.fspath(path)
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"no config.json in the official UNet folder {folder!r}")
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        if config.get("_class_name") == cls.__name__:
            raise ValueError(f"{folder!r} is already a {cls.__name__} folder; load it with `from_pretrained`")
        if config.get("addition_embed_type") is not None:
            raise ValueError(
                "the official layout stores reward modules under `add_embedding`, which clashes with "
                f"addition_embed_type={config['addition_embed_type']!r}; this is not an official reward UNet"
            )
        base_config = {name: config[name] for name in _BASE_PARAMETERS if name in config}
        state_dict = official_to_reward_state_dict(_load_weights(folder, allow_pickle=allow_pickle))
        text_proj = state_dict.get("reward_conditioner.failure_text_token_proj.weight")
        if text_proj is None:
            raise ValueError(f"{folder!r} has no official reward keys (text_linear.weight missing): a plain UNet?")
        settings = {
            **OFFICIAL_REWARD_CONFIG,
            "failure_text_embed_dim": text_proj.shape[1],  # 768 in the release (SD1.5 CLIP ViT-L)
            "reward_attention_dropout": 0.1,  # BERT dropout of the official layer (active in training only)
            "reward_init": "default",
            **reward_config,
        }
        model = cls(**base_config, **settings)
        result = model.load_state_dict(state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{folder!r} is not an official reward UNet: missing keys {result.missing_keys[:8]}, "
                f"unexpected keys {result.unexpected_keys[:8]}"
            )
        model.eval()
        return model.to(dtype=torch_dtype) if torch_dtype is not None else model

    def save_official_unet(self, path: str | os.PathLike) -> None:
        """Write this model in the official layout (config of a plain `UNet2DConditionModel` + official key names)."""
        mismatched = {
            key: self.config[key] for key, value in OFFICIAL_REWARD_CONFIG.items() if self.config[key] != value
        }
        if mismatched or self.config.reward_num_scores != len(PERSPECTIVES):
            raise ValueError(f"the official code hard-codes {OFFICIAL_REWARD_CONFIG}; this model has {mismatched}")
        os.makedirs(path, exist_ok=True)
        config = {"_class_name": UNet2DConditionModel.__name__, "_diffusers_version": diffusers.__version__}
        config.update({name: self.config[name] for name in _BASE_PARAMETERS})
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        state_dict = {key: value.detach().contiguous() for key, value in self.state_dict().items()}
        save_file(reward_to_official_state_dict(state_dict), os.path.join(path, "diffusion_pytorch_model.safetensors"))

    # ------------------------------------------------------------------ loading of older key names
    def _fix_state_dict_keys_on_load(self, state_dict: dict[str, torch.Tensor]) -> None:
        # `from_pretrained` fills parameters by key name without `load_state_dict`, so rename legacy keys here too.
        super()._fix_state_dict_keys_on_load(state_dict)
        for key in list(state_dict):
            renamed = _rename_legacy_key(key)
            if renamed != key:
                state_dict[renamed] = state_dict.pop(key)

    # ------------------------------------------------------------------ conditioning
    def compute_reward_condition(
        self,
        reward_scores: torch.Tensor,
        failure_text_embeds: torch.Tensor,
        null_reward_mask: torch.Tensor | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> RewardConditionEmbeddings:
        r"""Validate and embed the reward condition once; pass the result to `forward(..., reward_condition=...)`.

        The condition does not depend on the timestep, so a sampler computes it once per call instead of at every
        step. `forward(reward_scores=..., failure_text_embeds=...)` computes exactly this internally.

        Args:
            reward_scores (`torch.Tensor` of shape `[B, 3]` or `[3]`): following, preserving, quality in [0, 5].
            failure_text_embeds (`torch.Tensor` of shape `[B, failure_text_embed_dim]` or `[failure_text_embed_dim]`):
                pooled text-encoder embedding of the failure text.
            null_reward_mask (`torch.BoolTensor` of shape `[B]`, *optional*): rows that get the null condition.
            batch_size (`int`, *optional*): rows to produce; a single input row is broadcast. Defaults to the number
                of rows of `reward_scores`.
            device (`torch.device`, *optional*): where the result goes; defaults to the device of `reward_scores`.

        Returns:
            [`RewardConditionEmbeddings`]: `global_embedding` `[B, time_embed_dim]` and `tokens` `[B, 2, C]` in the
            dtype of the reward modules.
        """
        if batch_size is None:
            if reward_scores is None:
                raise ValueError(self._missing_reward_scores_message(1))
            shape = torch.as_tensor(reward_scores).shape
            batch_size = int(shape[0]) if len(shape) == 2 else 1
        if device is None:
            device = reward_scores.device if isinstance(reward_scores, torch.Tensor) else torch.device("cpu")
        device = torch.device(device)
        # Compute where the reward weights are (under model CPU offload they may still be on the CPU); a weight on the
        # meta device means accelerate's sequential offload moves weights and inputs itself.
        weight = self.reward_conditioner.reward_time_embedding.linear_1.weight
        compute_device = device if weight.device.type == "meta" else weight.device
        reward_scores, failure_text_embeds, null_reward_mask = self._check_reward_inputs(
            batch_size, reward_scores, failure_text_embeds, null_reward_mask, compute_device
        )
        condition = self.reward_conditioner(reward_scores, failure_text_embeds, null_reward_mask)
        if condition.global_embedding.device != device:
            condition = RewardConditionEmbeddings(
                global_embedding=condition.global_embedding.to(device), tokens=condition.tokens.to(device)
            )
        return condition

    def _missing_reward_scores_message(self, batch: int) -> str:
        return (
            f"{type(self).__name__} needs `reward_scores` of shape [batch, {self.config.reward_num_scores}] "
            "(following, preserving, quality; floats in [0, 5]), e.g. torch.full((batch, 3), 5.0), "
            "or a precomputed `reward_condition` (see `compute_reward_condition`)"
        )

    def _check_reward_inputs(
        self,
        batch: int,
        reward_scores: Any,
        failure_text_embeds: Any,
        null_reward_mask: Any,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if reward_scores is None:
            raise ValueError(self._missing_reward_scores_message(batch))
        if failure_text_embeds is None:
            raise ValueError(
                f"{type(self).__name__} needs `failure_text_embeds` of shape [batch, "
                f"{self.config.failure_text_embed_dim}]: the pooled text-encoder embedding of the failure text "
                f"(no failure: {self.config.no_failure_text!r}); `added_cond_kwargs['negative_embeds']` also works"
            )
        reward_scores = torch.as_tensor(reward_scores, device=device)
        if reward_scores.dtype == torch.bool or not (
            reward_scores.is_floating_point() or reward_scores.dtype in (torch.int32, torch.int64)
        ):
            raise TypeError(f"`reward_scores` must be a float tensor, got dtype {reward_scores.dtype}")
        reward_scores = _broadcast_rows(reward_scores, batch, self.config.reward_num_scores, "reward_scores")
        failure_text_embeds = _broadcast_rows(
            torch.as_tensor(failure_text_embeds, device=device),
            batch,
            self.config.failure_text_embed_dim,
            "failure_text_embeds",
        )
        if null_reward_mask is not None:
            null_reward_mask = torch.as_tensor(null_reward_mask, device=device)
            if null_reward_mask.dtype != torch.bool or null_reward_mask.shape != (batch,):
                raise ValueError(
                    f"`null_reward_mask` must be a bool tensor of shape [{batch}], got {null_reward_mask.dtype} "
                    f"{tuple(null_reward_mask.shape)}"
                )
        return reward_scores, failure_text_embeds, null_reward_mask

    def _check_reward_condition(self, condition: Any, batch: int) -> RewardConditionEmbeddings:
        if not isinstance(condition, RewardConditionEmbeddings):
            raise TypeError(
                "`reward_condition` must be the RewardConditionEmbeddings returned by `compute_reward_condition`, "
                f"got {type(condition).__name__}"
            )
        global_dim = self.time_embedding.linear_2.out_features
        token_dim = self.config.block_out_channels[0]
        global_embedding, tokens = condition.global_embedding, condition.tokens
        if (
            global_embedding.ndim != 2
            or global_embedding.shape[0] not in (1, batch)
            or global_embedding.shape[1] != global_dim
        ):
            raise ValueError(
                f"`reward_condition.global_embedding` must have shape [{batch}, {global_dim}] (or [1, {global_dim}]), "
                f"got {tuple(global_embedding.shape)}"
            )
        if tokens.ndim != 3 or tokens.shape[0] != global_embedding.shape[0] or tokens.shape[2] != token_dim:
            raise ValueError(
                f"`reward_condition.tokens` must have shape [{global_embedding.shape[0]}, T, {token_dim}], "
                f"got {tuple(tokens.shape)}"
            )
        if global_embedding.shape[0] == 1 and batch != 1:
            return RewardConditionEmbeddings(
                global_embedding=global_embedding.expand(batch, -1), tokens=tokens.expand(batch, -1, -1)
            )
        return condition

    def _resolve_reward_condition(
        self,
        batch: int,
        reward_scores: Any,
        failure_text_embeds: Any,
        null_reward_mask: Any,
        reward_condition: Any,
        added_cond_kwargs: dict[str, Any] | None,
        device: torch.device,
    ) -> tuple[RewardConditionEmbeddings, dict[str, Any] | None]:
        """Read the reward inputs from the keyword arguments or `added_cond_kwargs` (official names accepted) and
        return the embedded condition plus the `added_cond_kwargs` left for the parent's conditioning."""
        remaining = dict(added_cond_kwargs) if added_cond_kwargs is not None else None
        given = {
            "reward_scores": reward_scores,
            "failure_text_embeds": failure_text_embeds,
            "null_reward_mask": null_reward_mask,
            "reward_condition": reward_condition,
        }
        if remaining is not None:
            for key, target in (
                ("reward_scores", "reward_scores"),
                ("failure_text_embeds", "failure_text_embeds"),
                ("negative_embeds", "failure_text_embeds"),  # official name
                ("null_reward_mask", "null_reward_mask"),
                ("reward_condition", "reward_condition"),
            ):
                if key in remaining:
                    if given[target] is not None:
                        raise ValueError(f"`{key}` was given both as a keyword argument and in `added_cond_kwargs`")
                    given[target] = remaining.pop(key)
            if self.config.encoder_hid_dim_type is None and self.config.addition_embed_type is None:
                remaining.pop("image_embeds", None)  # passed by the official scripts, never used by the model
        if given["reward_condition"] is not None:
            raw = [
                name for name in ("reward_scores", "failure_text_embeds", "null_reward_mask") if given[name] is not None
            ]
            if raw:
                raise ValueError(
                    f"pass either a precomputed `reward_condition` or {raw}, not both (the condition already holds them)"
                )
            return self._check_reward_condition(given["reward_condition"], batch), remaining
        condition = self.compute_reward_condition(
            given["reward_scores"],
            given["failure_text_embeds"],
            given["null_reward_mask"],
            batch_size=batch,
            device=device,
        )
        return condition, remaining

    @apply_lora_scale("cross_attention_kwargs")
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        reward_scores: torch.Tensor | None = None,
        failure_text_embeds: torch.Tensor | None = None,
        null_reward_mask: torch.Tensor | None = None,
        reward_condition: RewardConditionEmbeddings | None = None,
        conv_in_residual: torch.Tensor | None = None,
    ) -> UNet2DConditionOutput | tuple:
        r"""The `UNet2DConditionModel` forward plus the reward condition (all parent arguments unchanged).

        Args:
            reward_scores (`torch.Tensor` of shape `[B, 3]` or `[3]`):
                Following, preserving, quality scores in [0, 5]. A single row is broadcast over the batch.
            failure_text_embeds (`torch.Tensor` of shape `[B, failure_text_embed_dim]`):
                Pooled text-encoder embedding of the failure text. A single row is broadcast over the batch.
            null_reward_mask (`torch.BoolTensor` of shape `[B]`, *optional*):
                Rows that get the null reward condition (reward-condition dropout and reward guidance).
            reward_condition ([`RewardConditionEmbeddings`], *optional*):
                The output of `compute_reward_condition`, instead of the three arguments above (a sampler computes it
                once per call). One row is broadcast over the batch.
            conv_in_residual (`torch.Tensor` of shape `[B, C, H, W]`, *optional*):
                Added to `conv_in`'s output before the latent reward attention (SmartEdit's BIM image feature); its
                shape must equal that output's (`C` = `block_out_channels[0]`, `H, W` = the latent size).

        The official call style `added_cond_kwargs={"reward_scores": ..., "negative_embeds": ..., "image_embeds": ...}`
        is accepted too; `image_embeds` has no effect, as in the official model.

        The body mirrors diffusers' `UNet2DConditionModel.forward` (diffusers 0.42.1) step by step, with the two
        reward additions marked `# [reward]`. `tests/test_unet_runtime.py` checks it against the installed diffusers
        forward on several configs, so a diffusers release that changes the base forward fails loudly.
        """
        condition, added_cond_kwargs = self._resolve_reward_condition(
            sample.shape[0],
            reward_scores,
            failure_text_embeds,
            null_reward_mask,
            reward_condition,
            added_cond_kwargs,
            sample.device,
        )

        # ---- begin: mirrors diffusers.models.unets.unet_2d_condition.UNet2DConditionModel.forward (0.42.1)
        # When a latent side is not a multiple of 2**num_upsamplers, the up blocks are told their output size.
        forward_upsample_size = any(side % 2**self.num_upsamplers != 0 for side in sample.shape[-2:])
        upsample_size = None

        # Masks (1 = keep, 0 = discard) become additive biases with a singleton query dimension.
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)

        # 0. center input if necessary
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time (+ class, + added conditions, + [reward] global embedding)
        emb = self.time_embedding(self.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = self.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = emb + class_emb  # (class_embeddings_concat is refused in __init__)
        aug_emb = self.get_aug_embed(
            emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        if self.config.addition_embed_type == "image_hint":
            aug_emb, hint = aug_emb
            sample = torch.cat([sample, hint], dim=1)
        reward_emb = condition.global_embedding.to(emb.dtype)  # [reward] addition 1: the global reward embedding
        aug_emb = reward_emb if aug_emb is None else aug_emb + reward_emb
        emb = emb + aug_emb
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        encoder_hidden_states = self.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )

        # 2. pre-process
        sample = self.conv_in(sample)
        if conv_in_residual is not None:  # SmartEdit's image feature (`pipelines/pipeline_reward_smartedit.py`)
            if conv_in_residual.shape != sample.shape:
                raise ValueError(
                    f"`conv_in_residual` must have the conv_in output's shape {tuple(sample.shape)}, "
                    f"got {tuple(conv_in_residual.shape)}"
                )
            sample = sample + conv_in_residual.to(sample.dtype)
        # [reward] addition 2: the conv_in features attend to the reward and failure-text tokens
        sample = sample + self.latent_reward_attention(sample, condition.tokens.to(sample.dtype))

        # 2.5 GLIGEN position net
        if cross_attention_kwargs is not None and cross_attention_kwargs.get("gligen", None) is not None:
            cross_attention_kwargs = cross_attention_kwargs.copy()
            gligen_args = cross_attention_kwargs.pop("gligen")
            cross_attention_kwargs["gligen"] = {"objs": self.position_net(**gligen_args)}

        # 3. down (ControlNet residuals: down + mid; T2I-Adapter residuals: `down_intrablock_additional_residuals`)
        is_controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        is_adapter = down_intrablock_additional_residuals is not None
        if not is_adapter and mid_block_additional_residual is None and down_block_additional_residuals is not None:
            deprecate(
                "T2I should not use down_block_additional_residuals",
                "1.3.0",
                "Passing intrablock residual connections with `down_block_additional_residuals` is deprecated "
                "and will be removed in diffusers 1.3.0. `down_block_additional_residuals` should only be used "
                "for ControlNet. Please make sure use `down_intrablock_additional_residuals` instead. ",
                standard_warn=False,
            )
            down_intrablock_additional_residuals = down_block_additional_residuals
            is_adapter = True

        down_block_res_samples = (sample,)
        for downsample_block in self.down_blocks:
            if getattr(downsample_block, "has_cross_attention", False):
                additional_residuals = {}
                if is_adapter and len(down_intrablock_additional_residuals) > 0:
                    additional_residuals["additional_residuals"] = down_intrablock_additional_residuals.pop(0)
                sample, res_samples = downsample_block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                    **additional_residuals,
                )
            else:
                sample, res_samples = downsample_block(hidden_states=sample, temb=emb)
                if is_adapter and len(down_intrablock_additional_residuals) > 0:
                    sample += down_intrablock_additional_residuals.pop(0)
            down_block_res_samples += res_samples

        if is_controlnet:
            down_block_res_samples = tuple(
                res_sample + residual
                for res_sample, residual in zip(down_block_res_samples, down_block_additional_residuals)
            )

        # 4. mid
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(
                    sample,
                    emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample = self.mid_block(sample, emb)
            if (  # T2I-Adapter-XL
                is_adapter
                and len(down_intrablock_additional_residuals) > 0
                and sample.shape == down_intrablock_additional_residuals[0].shape
            ):
                sample += down_intrablock_additional_residuals.pop(0)
        if is_controlnet:
            sample = sample + mid_block_additional_residual

        # 5. up
        for index, upsample_block in enumerate(self.up_blocks):
            is_final_block = index == len(self.up_blocks) - 1
            res_samples = down_block_res_samples[-len(upsample_block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(upsample_block.resnets)]
            if not is_final_block and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]
            if getattr(upsample_block, "has_cross_attention", False):
                sample = upsample_block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res_samples,
                    encoder_hidden_states=encoder_hidden_states,
                    cross_attention_kwargs=cross_attention_kwargs,
                    upsample_size=upsample_size,
                    attention_mask=attention_mask,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample = upsample_block(
                    hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples, upsample_size=upsample_size
                )

        # 6. post-process
        if self.conv_norm_out:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        # ---- end: mirrors diffusers UNet2DConditionModel.forward

        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)


def _rename_legacy_key(key: str) -> str:
    for old, new in LEGACY_TO_CURRENT_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _rename_legacy_keys_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """`load_state_dict` pre-hook: read `<prefix>reward_time_embedding.*` etc. as `<prefix>reward_conditioner.…`."""
    for key in list(state_dict):
        if key.startswith(prefix):
            renamed = prefix + _rename_legacy_key(key[len(prefix) :])
            if renamed != key:
                state_dict[renamed] = state_dict.pop(key)


def _broadcast_rows(tensor: torch.Tensor, batch: int, width: int, name: str) -> torch.Tensor:
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[1] != width or tensor.shape[0] not in (1, batch):
        raise ValueError(f"`{name}` must have shape [{batch}, {width}] (or [{width}]), got {tuple(tensor.shape)}")
    return tensor.expand(batch, width) if tensor.shape[0] == 1 else tensor


def _load_weights(folder: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    single = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        state_dict: dict[str, torch.Tensor] = {}
        for shard in shards:
            state_dict.update(load_file(os.path.join(folder, shard)))
        return state_dict
    pickle_path = os.path.join(folder, "diffusion_pytorch_model.bin")
    if os.path.isfile(pickle_path):
        if not allow_pickle:
            raise ValueError(
                f"{folder!r} only has a pickle checkpoint (diffusion_pytorch_model.bin); pickle files can run code. "
                "Pass allow_pickle=True if you trust its source (it is then read with torch.load(weights_only=True))"
            )
        return torch.load(pickle_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors (or sharded index) in {folder!r}")


_BASE_PARAMETERS: tuple[str, ...] = tuple(inspect.signature(UNet2DConditionModel.__init__).parameters)[1:]
_REWARD_PARAMETERS: tuple[str, ...] = tuple(
    name
    for name in tuple(inspect.signature(RewardUNet2DConditionModel.__init__).parameters)[1:]
    if name not in _BASE_PARAMETERS
)
