"""Reward conditioning for DiT editors loaded by ComfyUI's own loaders: FLUX.1 (Kontext) and Qwen-Image(-Edit).

The reward math is the library's: the trainer's ``reward_lora/reward_modules.safetensors`` is loaded into the
library's `RewardConditioner` and the backbone's reward attention (`FluxRewardAttention`, `QwenRewardAttention`)
(`RewardDiTModules`), and this file only routes their inputs and outputs through ComfyUI's models
(``comfy/ldm/flux/model.py``, ``comfy/ldm/qwen_image/model.py``). One rule for both families:

- **condition** (`pack_reward_condition`): each conditioning entry carries its own reward in ``model_conds`` under
  `REWARD_MODEL_COND` — a ``[1, 4 + D]`` row: the three scores, the reward-guidance scale and the pooled failure-text
  embedding. ComfyUI batches and repeats it per row like any model condition, so different prompts in one batch or
  queue keep their own rewards; the batched rows reach the model as `PackedRewardRows` (kept float32).
- **diffusion-model wrapper** (`RewardDiTWrapper`, ``WrappersMP.DIFFUSION_MODEL``): per call it runs the conditioner
  on that call's rows and exposes the result to the patched modules through a `contextvars.ContextVar` that is set
  for the call and reset afterwards (no state on modules, nothing kept between calls). Rows with reward guidance > 1
  get a second pass with the null condition, combined by the library's `combine_reward_guidance`.
- **object patches** (forwards only, so the base weights keep their keys and ComfyUI's LoRA patching still reaches
  them), where diffusers' reward transformers put the reward (`DiTFamily`, one per backbone):

  | | global vector added to | image queries (QK-normed, before RoPE) taken from | gated reward attention added before |
  | --- | --- | --- | --- |
  | FLUX | ``time_in`` (→ ``vec``, diffusers' ``temb``) | ``double_blocks[i].img_attn.norm`` | ``double_blocks[i].img_attn.proj`` |
  | Qwen-Image | ``time_text_embed`` (diffusers' ``temb``) | ``transformer_blocks[i].attn.norm_q`` | ``transformer_blocks[i].attn.to_out[0]`` |

  A timestep embedding with twice the rows of the reward (Qwen-Image-Edit-2511's ``zero_cond_t``: target timestep,
  then t = 0 for the references) gets the reward on both halves, as the library does.

A conditioning without the reward is refused with a message naming the node (nothing is silently substituted).
"""

from __future__ import annotations

import contextvars
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reward_edit_pipeline.models.reward_conditioner import RewardConditionEmbeddings, RewardConditioner
from reward_edit_pipeline.models.reward_dit_condition import combine_reward_guidance, validate_reward_guidance_scale
from reward_edit_pipeline.models.transformer_flux_reward import FluxRewardAttention, RewardFluxTransformer2DModel
from reward_edit_pipeline.models.transformer_qwenimage_reward import (
    QwenRewardAttention,
    RewardQwenImageTransformer2DModel,
)
from reward_edit_pipeline.pipelines.reward_dit_common import REWARD_ADAPTER_LORA_FILE, REWARD_ADAPTER_MODULES_FILE
from reward_edit_pipeline.rewards import PERSPECTIVES, validate_score_triple

#: key of the reward row in a conditioning entry's ``model_conds`` (and the diffusion model's keyword argument)
REWARD_MODEL_COND = "reward_edit_dit"
#: key of the wrapper in ComfyUI's ``WrappersMP.DIFFUSION_MODEL`` list
WRAPPER_KEY = "reward_edit_dit"
#: the files of a trainer's ``reward_lora/`` folder (the library's names)
REWARD_MODULES_FILE = REWARD_ADAPTER_MODULES_FILE
LORA_FILE = REWARD_ADAPTER_LORA_FILE
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


# ------------------------------------------------------------------------------------------------ per-call values
@dataclass
class _RewardCall:
    """What one diffusion-model call hands to the patched modules (lives only for that call)."""

    global_embedding: torch.Tensor
    tokens: torch.Tensor
    modules: RewardDiTModules
    pending: dict[int, torch.Tensor] = field(default_factory=dict)


_CURRENT_CALL: contextvars.ContextVar[_RewardCall | None] = contextvars.ContextVar("reward_edit_dit_call", default=None)


def _current_call(where: str) -> _RewardCall:
    call = _CURRENT_CALL.get()
    if call is None:
        raise RuntimeError(
            f"the reward-patched DiT model ran {where} outside its reward wrapper (another node replaced "
            "the diffusion-model wrappers?)"
        )
    return call


def _stash_reward_attention(block_index: int, query: torch.Tensor) -> None:
    """Run block `block_index`'s reward attention on the image queries ``[B, N, heads, head_dim]``; its gated output
    waits for the block's attention-output projection."""
    call = _current_call("the query norm")
    call.pending[block_index] = call.modules.reward_attention[block_index](query, call.tokens)


class _TimestepEmbeddingForward:
    """Timestep-embedding forward (Flux ``time_in``, Qwen ``time_text_embed``): the base output plus the call's reward
    global vector; an output with twice its rows (``zero_cond_t``: target, then t = 0) gets it on both halves."""

    def __init__(self, base_forward: Any) -> None:
        self.base_forward = base_forward

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_forward(*args, **kwargs)
        embedding = _current_call("the timestep embedding").global_embedding
        if out.shape[0] == 2 * embedding.shape[0]:
            embedding = embedding.repeat(2, 1)
        elif out.shape[0] != embedding.shape[0]:
            raise RuntimeError(
                f"timestep embedding has {out.shape[0]} rows for {embedding.shape[0]} reward rows (expected the same "
                "number, or twice as many under zero_cond_t)"
            )
        return out + embedding.to(out.dtype)


class _FluxQKNormForward:
    """Flux ``double_blocks[i].img_attn.norm`` forward (the QK norm): the normalised image queries (before RoPE) also
    go to the block's reward attention."""

    def __init__(self, base_forward: Any, block_index: int) -> None:
        self.base_forward = base_forward
        self.block_index = block_index

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.base_forward(q, k, v)
        _stash_reward_attention(self.block_index, q.transpose(1, 2))  # [B, heads, N, head_dim] → [B, N, heads, ...]
        return q, k


class _QwenQueryNormForward:
    """Qwen ``transformer_blocks[i].attn.norm_q`` forward: the normalised image queries (before RoPE) also go to the
    block's reward attention."""

    def __init__(self, base_forward: Any, block_index: int) -> None:
        self.base_forward = base_forward
        self.block_index = block_index

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        query = self.base_forward(query)
        _stash_reward_attention(self.block_index, query.transpose(1, 2))  # [B, heads, N, head_dim] → [B, N, heads, ...]
        return query


class _AttentionOutputForward:
    """The image stream's attention-output projection (Flux ``img_attn.proj``, Qwen ``attn.to_out[0]``): the
    projection of (image attention output + the block's gated reward attention), as diffusers' ``to_out``."""

    def __init__(self, base_forward: Any, block_index: int) -> None:
        self.base_forward = base_forward
        self.block_index = block_index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        reward = _current_call("the attention output").pending.pop(self.block_index, None)
        if reward is None:
            raise RuntimeError(f"block {self.block_index}: no reward attention output for the attention projection")
        return self.base_forward(x + reward.to(x.dtype))


def _bound_forward(module: nn.Module) -> Any:
    """The module's class forward bound to it (what an object patch of ``<module>.forward`` replaces)."""
    return type(module).forward.__get__(module)


# ------------------------------------------------------------------------------------------------ backbone families
@dataclass(frozen=True)
class DiTFamily:
    """What differs between the DiT backbones: the library class whose adapters fit, how to recognise ComfyUI's model
    and read its width and block count, and where the object patches go."""

    name: str
    library_class: type
    reward_attention_class: type[nn.Module]
    comfy_model: str
    is_model: Callable[[Any], bool]
    width_and_blocks: Callable[[Any], tuple[int, int]]
    object_patches: Callable[[Any], dict[str, Any]]

    def library_default(self, name: str) -> Any:
        """Default of a reward setting in the library class's ``__init__``."""
        return inspect.signature(self.library_class.__init__).parameters[name].default


def flux_object_patches(diffusion_model: Any) -> dict[str, Any]:
    """Object patches (``add_object_patch`` key → value, keys relative to the ComfyUI model) for a Flux model."""
    patches: dict[str, Any] = {
        "diffusion_model.time_in.forward": _TimestepEmbeddingForward(_bound_forward(diffusion_model.time_in))
    }
    for index, block in enumerate(diffusion_model.double_blocks):
        prefix = f"diffusion_model.double_blocks.{index}.img_attn"
        patches[f"{prefix}.norm.forward"] = _FluxQKNormForward(_bound_forward(block.img_attn.norm), index)
        patches[f"{prefix}.proj.forward"] = _AttentionOutputForward(_bound_forward(block.img_attn.proj), index)
    return patches


def qwen_image_object_patches(diffusion_model: Any) -> dict[str, Any]:
    """Object patches for a ComfyUI Qwen-Image model (``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``)."""
    patches: dict[str, Any] = {
        "diffusion_model.time_text_embed.forward": _TimestepEmbeddingForward(
            _bound_forward(diffusion_model.time_text_embed)
        )
    }
    for index, block in enumerate(diffusion_model.transformer_blocks):
        prefix = f"diffusion_model.transformer_blocks.{index}.attn"
        patches[f"{prefix}.norm_q.forward"] = _QwenQueryNormForward(_bound_forward(block.attn.norm_q), index)
        patches[f"{prefix}.to_out.0.forward"] = _AttentionOutputForward(_bound_forward(block.attn.to_out[0]), index)
    return patches


FLUX = DiTFamily(
    name="FLUX.1",
    library_class=RewardFluxTransformer2DModel,
    reward_attention_class=FluxRewardAttention,
    comfy_model="comfy.ldm.flux.model.Flux: time_in and double_blocks",
    is_model=lambda model: hasattr(model, "time_in") and hasattr(model, "double_blocks"),
    width_and_blocks=lambda model: (getattr(model, "hidden_size", None), len(model.double_blocks)),
    object_patches=flux_object_patches,
)
QWEN_IMAGE = DiTFamily(
    name="Qwen-Image",
    library_class=RewardQwenImageTransformer2DModel,
    reward_attention_class=QwenRewardAttention,
    comfy_model="comfy.ldm.qwen_image.model.QwenImageTransformer2DModel: time_text_embed and transformer_blocks",
    is_model=lambda model: all(hasattr(model, name) for name in ("time_text_embed", "transformer_blocks", "txt_norm")),
    width_and_blocks=lambda model: (getattr(model, "inner_dim", None), len(model.transformer_blocks)),
    object_patches=qwen_image_object_patches,
)
DIT_FAMILIES: tuple[DiTFamily, ...] = (FLUX, QWEN_IMAGE)


def family_of_adapter(class_name: str | None) -> DiTFamily:
    """The family of a trainer's adapter from its ``config.json`` ``_class_name``."""
    for family in DIT_FAMILIES:
        if class_name == family.library_class.__name__:
            return family
    known = [family.library_class.__name__ for family in DIT_FAMILIES]
    raise ValueError(f"the reward adapter's config.json names class {class_name!r}; the nodes load adapters of {known}")


def family_of_model(diffusion_model: Any) -> DiTFamily:
    """The family of a ComfyUI diffusion model; a model of no supported family is refused."""
    for family in DIT_FAMILIES:
        if family.is_model(diffusion_model):
            return family
    supported = "; ".join(f"{family.name} ({family.comfy_model})" for family in DIT_FAMILIES)
    raise ValueError(
        f"`model` is a {type(diffusion_model).__name__}; the reward adapters patch these ComfyUI models: {supported}"
    )


# ------------------------------------------------------------------------------------------------ reward modules
_REQUIRED_CONFIG = ("num_layers", "num_attention_heads", "attention_head_dim", "failure_text_embed_dim")


class RewardDiTModules(nn.Module):
    """The reward modules of a library reward transformer (`RewardFluxTransformer2DModel`,
    `RewardQwenImageTransformer2DModel`), under the same keys (``reward_conditioner.*``, ``reward_attention.{i}.*``),
    without the base transformer: what the trainer's ``reward_lora/`` holds."""

    def __init__(
        self,
        family: DiTFamily,
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
        self.family = family
        self.num_layers = num_layers
        self.inner_dim = inner_dim
        self.attention_head_dim = attention_head_dim
        self.failure_text_embed_dim = failure_text_embed_dim
        self.reward_conditioner = RewardConditioner(
            text_embed_dim=failure_text_embed_dim,
            global_dim=inner_dim,
            token_dim=reward_token_dim,
            num_scores=reward_num_scores,
            sinusoid_dim=reward_sinusoid_dim,
        )
        self.reward_attention = nn.ModuleList(
            [family.reward_attention_class(reward_token_dim, inner_dim, attention_head_dim) for _ in range(num_layers)]
        )

    @classmethod
    def from_config(cls, config: dict[str, Any], family: DiTFamily) -> RewardDiTModules:
        """From a library reward transformer's config (the ``config.json`` the trainer writes into ``reward_lora/``);
        settings the config leaves out take the library class's defaults."""
        missing = [name for name in _REQUIRED_CONFIG if name not in config]
        if missing:
            raise ValueError(
                f"the reward adapter config lacks {missing} (a {family.name} reward trainer's reward_lora/)"
            )
        settings = {
            name: config.get(name, family.library_default(name))
            for name in ("reward_token_dim", "reward_num_scores", "reward_sinusoid_dim")
        }
        return cls(family, **{name: config[name] for name in _REQUIRED_CONFIG}, **settings)

    @classmethod
    def from_adapter_folder(
        cls, adapter_folder: str | os.PathLike, family: DiTFamily | None = None
    ) -> RewardDiTModules:
        """Load a trainer's ``reward_lora/`` (``config.json`` + ``reward_modules.safetensors``; every key required).
        The family comes from the config's ``_class_name``; with `family` given, an adapter of another is refused."""
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
        class_name = config.get("_class_name")
        if family is None:
            family = family_of_adapter(class_name)
        elif class_name not in (None, family.library_class.__name__):
            raise ValueError(
                f"`reward_adapter` {folder!r} was trained for {class_name}; expected a {family.name} adapter "
                f"({family.library_class.__name__})"
            )
        modules = cls.from_config(config, family)
        state = load_file(weights_path)
        expected = set(modules.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"{weights_path} does not match the {family.name} reward modules: missing "
                f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
            )
        modules.load_state_dict(state)
        return modules.eval().requires_grad_(False)

    def check_model(self, diffusion_model: Any) -> None:
        """Refuse a ComfyUI model of another family, width or block count than the adapter's."""
        family = family_of_model(diffusion_model)
        if family is not self.family:
            raise ValueError(
                f"the reward adapter was trained for {self.family.name} ({self.family.library_class.__name__}); "
                f"`model` is a {family.name} model ({type(diffusion_model).__name__})"
            )
        width, blocks = family.width_and_blocks(diffusion_model)
        if width != self.inner_dim or blocks != self.num_layers:
            raise ValueError(
                f"the reward adapter was trained for width {self.inner_dim} and {self.num_layers} blocks; "
                f"`model` has width {width} and {blocks} blocks"
            )

    def object_patches(self, diffusion_model: Any) -> dict[str, Any]:
        """`add_object_patch` keys and values that route the reward through `diffusion_model` (checked first)."""
        self.check_model(diffusion_model)
        return self.family.object_patches(diffusion_model)


def apply_object_patches(diffusion_model: Any, patches: dict[str, Any]) -> None:
    """Set object patches on a bare diffusion model (what ComfyUI's ModelPatcher does; for tests and scripts)."""
    for key, value in patches.items():
        target = diffusion_model
        *path, name = key.split(".")[1:]
        for part in path:
            target = getattr(target, part)
        setattr(target, name, value)


# ------------------------------------------------------------------------------------------------ the wrapper
class RewardDiTWrapper:
    """``WrappersMP.DIFFUSION_MODEL`` wrapper of a reward-patched ComfyUI DiT model (see the module docstring)."""

    def __init__(self, modules: RewardDiTModules) -> None:
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
        family = self.modules.family.name
        packed = kwargs.pop(REWARD_MODEL_COND, None)
        if packed is None:
            raise ValueError(
                f"this {family} model carries a reward adapter: every conditioning it samples with (positive and, "
                "when used, negative) needs a 'Reward DiT Condition' node"
            )
        parameter = next(self.modules.parameters())
        if parameter.device != x.device:
            self.modules.to(x.device)  # ComfyUI moves the base model; the adapter follows the input
        rows = packed.rows if isinstance(packed, PackedRewardRows) else packed
        scores, scales, text = unpack_reward_condition(rows.to(x.device))
        if scores.shape[0] != x.shape[0]:
            raise ValueError(f"reward condition has {scores.shape[0]} rows for a batch of {x.shape[0]}")
        if text.shape[1] != self.modules.failure_text_embed_dim:
            raise ValueError(
                f"the failure-text embedding has width {text.shape[1]}; this {family} adapter expects "
                f"{self.modules.failure_text_embed_dim} — give 'Reward DiT Condition' the CLIP (text encoder) loaded "
                "for this model"
            )
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
