"""Reward conditioning for a FLUX.1 (Kontext) model loaded by ComfyUI's own loaders.

The reward math is the library's: the trainer's ``reward_lora/reward_modules.safetensors`` is loaded into the
library's `RewardConditioner` and `FluxRewardAttention` modules (`FluxRewardModules`), and this file only routes
their inputs and outputs through ComfyUI's Flux (``comfy/ldm/flux/model.py``):

- **condition** (`pack_reward_condition`): each conditioning entry carries its own reward in ``model_conds`` under
  `REWARD_MODEL_COND` — a ``[1, 4 + D]`` row: the three scores, the reward-guidance scale and the pooled failure-text
  embedding. ComfyUI batches and repeats it per row like any model condition, so different prompts in one batch or
  queue keep their own rewards; the batched rows reach the model as `PackedRewardRows` (kept float32).
- **diffusion-model wrapper** (`FluxRewardWrapper`, ``WrappersMP.DIFFUSION_MODEL``): per call it runs the conditioner
  on that call's rows and exposes the result to the patched modules through a `contextvars.ContextVar` that is set
  for the call and reset afterwards (no state on modules, nothing kept between calls). Rows with reward guidance > 1
  get a second pass with the null condition, combined by the library's `combine_reward_guidance`.
- **object patches** (forwards only, so the base weights keep their keys and ComfyUI's LoRA patching still reaches
  them): ``time_in`` adds the reward global vector to the timestep embedding (it then flows into ``vec`` for every
  block and the final layer, as diffusers' ``temb``); in each double-stream block, ``img_attn.norm`` hands the
  normalised image queries (before RoPE) to that block's `FluxRewardAttention`, and ``img_attn.proj`` adds the gated
  result to the image attention output before the projection (diffusers' ``to_out``).

A conditioning without the reward is refused with a message naming the node (nothing is silently substituted).
"""

from __future__ import annotations

import contextvars
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reward_edit_pipeline.models.reward_conditioner import RewardConditionEmbeddings, RewardConditioner
from reward_edit_pipeline.models.reward_dit_condition import combine_reward_guidance, validate_reward_guidance_scale
from reward_edit_pipeline.models.transformer_flux_reward import FluxRewardAttention
from reward_edit_pipeline.rewards import PERSPECTIVES, validate_score_triple

#: key of the reward row in a conditioning entry's ``model_conds`` (and the diffusion model's keyword argument)
REWARD_MODEL_COND = "reward_edit_dit"
#: key of the wrapper in ComfyUI's ``WrappersMP.DIFFUSION_MODEL`` list
WRAPPER_KEY = "reward_edit_dit"
REWARD_MODULES_FILE = "reward_modules.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
_NUM_SCORES = len(PERSPECTIVES)
_HEADER = _NUM_SCORES + 1  # scores, then the reward-guidance scale


def pack_reward_condition(
    reward_scores: tuple[float, float, float], failure_text_embed: torch.Tensor, reward_guidance_scale: float = 1.0
) -> torch.Tensor:
    """One conditioning's reward as a float32 row ``[1, 4 + D]``: scores, reward-guidance scale, pooled failure text."""
    scores = validate_score_triple(reward_scores, name="reward scores")
    scale = validate_reward_guidance_scale(reward_guidance_scale)
    embed = failure_text_embed.detach().float().reshape(1, -1).cpu()
    header = torch.tensor([[*scores, scale]], dtype=torch.float32)
    return torch.cat([header, embed], dim=1)


def unpack_reward_condition(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, 4 + D]`` rows → scores ``[B, 3]``, reward-guidance scales ``[B]``, failure-text embeddings ``[B, D]``."""
    if packed.ndim != 2 or packed.shape[1] <= _HEADER:
        raise ValueError(f"the reward condition must have shape [batch, {_HEADER} + D], got {tuple(packed.shape)}")
    packed = packed.float()
    return packed[:, :_NUM_SCORES], packed[:, _NUM_SCORES], packed[:, _HEADER:]


@dataclass(frozen=True)
class PackedRewardRows:
    """The batched reward rows as ComfyUI hands them to the diffusion model. Not a tensor on purpose:
    ``BaseModel._apply_model`` casts every tensor-like model condition to the model's dtype, which in fp16/bf16 would
    change the scores (4.3 → 4.3125 in bf16) and the failure-text embedding; the rows stay float32."""

    rows: torch.Tensor


class FluxRewardModules(nn.Module):
    """The reward modules of a `RewardFluxTransformer2DModel`, under the same keys (``reward_conditioner.*``,
    ``reward_attention.{i}.*``), without the base transformer: what the trainer's ``reward_lora/`` holds."""

    def __init__(
        self,
        num_layers: int,
        num_attention_heads: int,
        attention_head_dim: int,
        failure_text_embed_dim: int,
        reward_token_dim: int,
        reward_num_scores: int = _NUM_SCORES,
        reward_sinusoid_dim: int = 256,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.num_layers = num_layers
        self.inner_dim = inner_dim
        self.attention_head_dim = attention_head_dim
        self.reward_conditioner = RewardConditioner(
            text_embed_dim=failure_text_embed_dim,
            global_dim=inner_dim,
            token_dim=reward_token_dim,
            num_scores=reward_num_scores,
            sinusoid_dim=reward_sinusoid_dim,
        )
        self.reward_attention = nn.ModuleList(
            [FluxRewardAttention(reward_token_dim, inner_dim, attention_head_dim) for _ in range(num_layers)]
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FluxRewardModules:
        """From a `RewardFluxTransformer2DModel` config (the ``config.json`` the trainer writes into ``reward_lora/``)."""
        missing = [
            name
            for name in ("num_layers", "num_attention_heads", "attention_head_dim", "failure_text_embed_dim")
            if name not in config
        ]
        if missing:
            raise ValueError(f"the reward adapter config lacks {missing} (a FLUX reward trainer's reward_lora/)")
        return cls(
            num_layers=config["num_layers"],
            num_attention_heads=config["num_attention_heads"],
            attention_head_dim=config["attention_head_dim"],
            failure_text_embed_dim=config["failure_text_embed_dim"],
            reward_token_dim=config.get("reward_token_dim", 768),
            reward_num_scores=config.get("reward_num_scores", _NUM_SCORES),
            reward_sinusoid_dim=config.get("reward_sinusoid_dim", 256),
        )

    @classmethod
    def from_adapter_folder(cls, adapter_folder: str | os.PathLike) -> FluxRewardModules:
        """Load a trainer's ``reward_lora/`` (``config.json`` + ``reward_modules.safetensors``; every key required)."""
        from safetensors.torch import load_file

        folder = os.fspath(adapter_folder)
        config_path = os.path.join(folder, "config.json")
        weights_path = os.path.join(folder, REWARD_MODULES_FILE)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"`reward_adapter` {folder!r} has no {os.path.basename(path)} (expected a trainer's reward_lora/)"
                )
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        if config.get("_class_name") not in (None, "RewardFluxTransformer2DModel"):
            raise ValueError(
                f"`reward_adapter` {folder!r} was trained for {config.get('_class_name')}; this node patches FLUX.1 "
                "models (RewardFluxTransformer2DModel adapters)"
            )
        modules = cls.from_config(config)
        state = load_file(weights_path)
        expected = set(modules.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"{weights_path} does not match the FLUX reward modules: missing {sorted(expected - set(state))[:5]}, "
                f"unexpected {sorted(set(state) - expected)[:5]}"
            )
        modules.load_state_dict(state)
        return modules.eval().requires_grad_(False)

    def check_flux_model(self, diffusion_model: Any) -> None:
        """Refuse a ComfyUI Flux model whose width or double-block count differs from the adapter's."""
        hidden_size = getattr(diffusion_model, "hidden_size", None)
        blocks = getattr(diffusion_model, "double_blocks", None)
        if blocks is None or not hasattr(diffusion_model, "time_in"):
            raise ValueError(
                f"`model` is a {type(diffusion_model).__name__}; the reward adapter needs a FLUX.1 model "
                "(comfy.ldm.flux.model.Flux: time_in and double_blocks)"
            )
        if hidden_size != self.inner_dim or len(blocks) != self.num_layers:
            raise ValueError(
                f"the reward adapter was trained for width {self.inner_dim} and {self.num_layers} double blocks; "
                f"`model` has width {hidden_size} and {len(blocks)} double blocks"
            )


@dataclass
class _RewardCall:
    """What one diffusion-model call hands to the patched modules (lives only for that call)."""

    global_embedding: torch.Tensor
    tokens: torch.Tensor
    modules: FluxRewardModules
    pending: dict[int, torch.Tensor] = field(default_factory=dict)


_CURRENT_CALL: contextvars.ContextVar[_RewardCall | None] = contextvars.ContextVar("reward_edit_dit_call", default=None)


def _current_call(where: str) -> _RewardCall:
    call = _CURRENT_CALL.get()
    if call is None:
        raise RuntimeError(
            f"the reward-patched FLUX model ran {where} outside its reward wrapper (another node replaced "
            "the diffusion-model wrappers?)"
        )
    return call


class _TimeInForward:
    """``time_in`` forward: the base embedding plus the call's reward global vector."""

    def __init__(self, base_forward: Any) -> None:
        self.base_forward = base_forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        return out + _current_call("time_in").global_embedding.to(out.dtype)


class _QueryNormForward:
    """``double_blocks[i].img_attn.norm`` forward: the base QK norm; the normalised image queries (before RoPE) go
    to the block's `FluxRewardAttention`, whose gated output waits for the block's ``img_attn.proj``."""

    def __init__(self, base_forward: Any, block_index: int) -> None:
        self.base_forward = base_forward
        self.block_index = block_index

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.base_forward(q, k, v)
        call = _current_call("img_attn.norm")
        # ComfyUI: [B, heads, N, head_dim]; the library's reward attention takes [B, N, heads, head_dim].
        reward = call.modules.reward_attention[self.block_index](q.transpose(1, 2), call.tokens)
        call.pending[self.block_index] = reward
        return q, k


class _ProjForward:
    """``double_blocks[i].img_attn.proj`` forward: the projection of (image attention output + reward attention)."""

    def __init__(self, base_forward: Any, block_index: int) -> None:
        self.base_forward = base_forward
        self.block_index = block_index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        call = _current_call("img_attn.proj")
        reward = call.pending.pop(self.block_index, None)
        if reward is None:
            raise RuntimeError(f"double block {self.block_index}: no reward attention output for img_attn.proj")
        return self.base_forward(x + reward.to(x.dtype))


def flux_object_patches(diffusion_model: Any) -> dict[str, Any]:
    """Object patches (``add_object_patch`` key → value, keys relative to the ComfyUI model) for a Flux model."""
    patches: dict[str, Any] = {
        "diffusion_model.time_in.forward": _TimeInForward(
            type(diffusion_model.time_in).forward.__get__(diffusion_model.time_in)
        )
    }
    for index, block in enumerate(diffusion_model.double_blocks):
        norm, proj = block.img_attn.norm, block.img_attn.proj
        prefix = f"diffusion_model.double_blocks.{index}.img_attn"
        patches[f"{prefix}.norm.forward"] = _QueryNormForward(type(norm).forward.__get__(norm), index)
        patches[f"{prefix}.proj.forward"] = _ProjForward(type(proj).forward.__get__(proj), index)
    return patches


def apply_flux_object_patches(diffusion_model: Any, patches: dict[str, Any]) -> None:
    """Set `flux_object_patches` on a bare Flux module (what ComfyUI's ModelPatcher does; for tests and scripts)."""
    for key, value in patches.items():
        target = diffusion_model
        *path, name = key.split(".")[1:]
        for part in path:
            target = getattr(target, part)
        setattr(target, name, value)


class FluxRewardWrapper:
    """``WrappersMP.DIFFUSION_MODEL`` wrapper of a reward-patched ComfyUI Flux model (see the module docstring)."""

    def __init__(self, modules: FluxRewardModules) -> None:
        self.modules = modules

    def _embed(self, scores: torch.Tensor, text: torch.Tensor, null: bool) -> RewardConditionEmbeddings:
        mask = torch.full((scores.shape[0],), null, dtype=torch.bool, device=scores.device) if null else None
        return self.modules.reward_conditioner(scores, text, mask)

    def _run(self, executor: Any, embeddings: RewardConditionEmbeddings, args: tuple, kwargs: dict) -> torch.Tensor:
        token = _CURRENT_CALL.set(_RewardCall(embeddings.global_embedding, embeddings.tokens, self.modules))
        try:
            return executor(*args, **kwargs)
        finally:
            _CURRENT_CALL.reset(token)

    def __call__(self, executor: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        packed = kwargs.pop(REWARD_MODEL_COND, None)
        if packed is None:
            raise ValueError(
                "this FLUX model carries a reward adapter: every conditioning it samples with (positive and, when "
                "used, negative) needs a 'Reward DiT Condition' node"
            )
        parameter = next(self.modules.parameters())
        if parameter.device != x.device:
            self.modules.to(x.device)  # ComfyUI moves the base model; the adapter follows the input
        rows = packed.rows if isinstance(packed, PackedRewardRows) else packed
        scores, scales, text = unpack_reward_condition(rows.to(x.device))
        if scores.shape[0] != x.shape[0]:
            raise ValueError(f"reward condition has {scores.shape[0]} rows for a batch of {x.shape[0]}")
        with torch.no_grad():
            conditioned = self._embed(scores, text, null=False)
        output = self._run(executor, conditioned, (x, *args), kwargs)
        if bool((scales > 1.0).any()):
            with torch.no_grad():
                null = self._embed(scores, text, null=True)
            null_output = self._run(executor, null, (x, *args), kwargs)
            scale = scales.to(output.dtype).reshape(-1, *([1] * (output.ndim - 1)))
            output = combine_reward_guidance(output, null_output, scale)
        return output
