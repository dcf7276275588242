"""ComfyUI nodes for reward conditioning of DiT editors loaded with ComfyUI's own loaders: FLUX.1 (Kontext) and
Qwen-Image(-Edit).

- ``RewardDiTCondition`` (CONDITIONING, CLIP, scores, failure text, reward guidance → CONDITIONING): puts the reward
  on each conditioning entry's ``model_conds`` (`comfy_nodes.dit_patch.pack_reward_condition`); the failure text is
  embedded with the workflow's CLIP the way the library's pipeline for that text encoder does (`encode_failure_text`).
- ``RewardDiTAdapterLoader`` (MODEL, trainer ``reward_lora/`` folder, LoRA strength → MODEL): reads the adapter's
  backbone from its ``config.json``, checks that the loaded model is of that backbone, applies the trainer's LoRA
  with ComfyUI's LoRA loader at its trained scale (the alpha recorded in the LoRA file's header,
  `lora_alpha_entries`) and patches the model (`comfy_nodes.dit_patch`).

V1 classes (``INPUT_TYPES``) and V3 classes (``comfy_api.v0_0_2``) share the two ``run_*`` functions below, as the
rest of the pack does. ComfyUI modules are imported inside the functions (they exist only inside ComfyUI).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT, resolve_failure_text

from .core import make_reward_condition

logger = logging.getLogger(__name__)

CATEGORY = "reward_edit/dit"
DIT_DISPLAY_NAMES: dict[str, str] = {
    "RewardDiTCondition": "Reward DiT Condition",
    "RewardDiTAdapterLoader": "Reward DiT Adapter Loader",
}
DIT_DESCRIPTIONS: dict[str, str] = {
    "RewardDiTCondition": "Attach multi-reward scores and failure text to a FLUX.1 Kontext or Qwen-Image-Edit "
    "conditioning (use it on every conditioning the patched model samples with).",
    "RewardDiTAdapterLoader": "Apply a reward adapter trained by `reward-edit train --backbone flux-kontext` or "
    "`--backbone qwen-image-edit` (its reward_lora/ folder: LoRA + reward modules) to a FLUX.1 or Qwen-Image model "
    "from ComfyUI's loaders.",
}
_SCORE = {"default": 5.0, "min": 0.0, "max": 5.0, "step": 0.5}
_GUIDANCE = {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1}
_STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}


def is_qwen_text_encoder(clip: Any) -> bool:
    """Whether `clip` holds ComfyUI's Qwen-Image text encoder (Qwen2.5-VL; CLIPLoader type ``qwen_image``)."""
    try:
        from comfy.text_encoders.qwen_image import QwenImageTEModel
    except ImportError:  # ComfyUI builds without Qwen-Image (e.g. March 2024)
        return False
    return isinstance(getattr(clip, "cond_stage_model", None), QwenImageTEModel)


def encode_qwen_failure_text(clip: Any, text: str) -> Any:
    """``[1, D]``: the mean of ComfyUI's Qwen2.5-VL final hidden states over the text's own tokens — the library's
    `RewardQwenImageEditPipeline.encode_failure_text` (raw text, no chat template, at most
    ``FAILURE_TEXT_MAX_TOKENS`` tokens).

    The text is tokenized by ComfyUI's Qwen tokenizer with the template ``"{}"`` (the raw text). ComfyUI's
    ``QwenImageTEModel.encode_token_weights`` then drops the chat-template prefix it expects (for a template-less text
    it would keep only the last token), so the same model is run through its base class's ``encode_token_weights``,
    which returns the final hidden state of every token.
    """
    import comfy.sd1_clip
    import torch

    from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import FAILURE_TEXT_MAX_TOKENS, mean_over_tokens

    model = clip.cond_stage_model
    tokens = clip.tokenize(text, llama_template="{}")
    rows = tokens[model.clip_name]
    if len(rows) != 1:
        raise ValueError(f"the Qwen tokenizer split the failure text into {len(rows)} sections; expected one")
    if len(rows[0]) > FAILURE_TEXT_MAX_TOKENS:
        logger.warning("failure text longer than %d tokens is truncated", FAILURE_TEXT_MAX_TOKENS)
        tokens = {**tokens, model.clip_name: [rows[0][:FAILURE_TEXT_MAX_TOKENS]]}
    model.reset_clip_options()  # the final hidden state, whatever CLIPSetLastLayer asked for the prompt
    clip.load_model()
    hidden, _, *extra = comfy.sd1_clip.SD1ClipModel.encode_token_weights(model, tokens)
    mask = extra[0].get("attention_mask") if extra else None
    return mean_over_tokens(hidden, torch.ones(hidden.shape[:2]) if mask is None else mask)


def encode_failure_text(clip: Any, failure_text: str | None) -> Any:
    """The pooled embedding ``[1, D]`` of the failure text (blank/absent → the library's "no failure" text), as the
    library's pipeline for the workflow's text encoder computes it: Qwen-Image's Qwen2.5-VL → the mean over the
    text's tokens (`encode_qwen_failure_text`); otherwise the CLIP's pooled output (for FLUX the CLIP-L pooled
    output, as `RewardFluxKontextPipeline`)."""
    text = resolve_failure_text(failure_text, DEFAULT_NO_FAILURE_TEXT)
    if is_qwen_text_encoder(clip):
        return encode_qwen_failure_text(clip, text)
    _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if pooled is None:
        raise ValueError(
            "`clip` gives no pooled output; the reward adapters embed the failure text with CLIP-L (FLUX.1, "
            "DualCLIPLoader) or the Qwen2.5-VL text encoder (Qwen-Image, CLIPLoader type qwen_image)"
        )
    return pooled


def reward_rows_cond(packed: Any) -> Any:
    """A ``comfy.conds.CONDRegular`` for the reward row whose batched value is a `PackedRewardRows` (not cast to the
    model's dtype by ComfyUI, see there)."""
    import comfy.conds

    from .dit_patch import PackedRewardRows

    class RewardRowsCond(comfy.conds.CONDRegular):
        def concat(self, others: list) -> PackedRewardRows:
            return PackedRewardRows(super().concat(others).float())

    return RewardRowsCond(packed)


def run_condition(
    conditioning: list,
    clip: Any,
    following: float,
    preserving: float,
    quality: float,
    reward_guidance_scale: float = 1.0,
    failure_text: str | None = None,
) -> list:
    """``RewardDiTCondition``: a copy of `conditioning` whose entries carry the reward in ``model_conds``."""
    from .dit_patch import REWARD_MODEL_COND, pack_reward_condition

    reward = make_reward_condition(following, preserving, quality, failure_text)
    packed = pack_reward_condition(reward.scores, encode_failure_text(clip, reward.failure_text), reward_guidance_scale)
    out = []
    for cond, options in conditioning:
        options = dict(options)
        model_conds = dict(options.get("model_conds", {}))
        model_conds[REWARD_MODEL_COND] = reward_rows_cond(packed)
        options["model_conds"] = model_conds
        out.append([cond, options])
    return out


def diffusion_model_of(model: Any) -> Any:
    """The diffusion model of a ComfyUI ``ModelPatcher`` (``get_model_object`` where the build has it)."""
    get_model_object = getattr(model, "get_model_object", None)
    return get_model_object("diffusion_model") if get_model_object is not None else model.model.diffusion_model


def lora_alpha_entries(adapter_folder: str, lora: dict[str, Any]) -> dict[str, Any]:
    """``<layer>.alpha`` tensors for ComfyUI's LoRA loader (which scales by alpha / rank, 1 without them) that give
    every layer of the adapter's LoRA state `lora` the scale it was trained with, from the settings the trainer
    records in the file header (the library's `read_reward_adapter_lora_config` / `lora_layer_alphas`). None recorded
    (an adapter written before they were): no entries, so alpha = rank, as the library's loader assumes too."""
    import torch

    from reward_edit_pipeline.pipelines.reward_dit_common import (
        LORA_COMPONENT,
        lora_layer_alphas,
        read_reward_adapter_lora_config,
    )

    lora_config = read_reward_adapter_lora_config(adapter_folder)
    if lora_config is None:
        logger.warning("%s: the LoRA file records no settings (an older adapter); applied with alpha = rank",
                       adapter_folder)  # fmt: skip
        return {}
    prefix, down = LORA_COMPONENT + ".", ".lora_A.weight"
    ranks = {key[len(prefix) : -len(down)]: tensor.shape[0] for key, tensor in lora.items()
             if key.startswith(prefix) and key.endswith(down)}  # fmt: skip
    alphas = lora_layer_alphas(lora_config, ranks)
    return {f"{prefix}{layer}.alpha": torch.tensor(alpha, dtype=torch.float32) for layer, alpha in alphas.items()}


def run_adapter_loader(model: Any, reward_adapter: str, lora_strength: float = 1.0) -> Any:
    """``RewardDiTAdapterLoader``: a clone of `model` with the adapter's LoRA patches, object patches and wrapper.
    The backbone comes from the adapter's ``config.json``; a model of another backbone (or of none the nodes
    support) is refused before anything is patched."""
    from .dit_patch import LORA_FILE, WRAPPER_KEY, RewardDiTModules, RewardDiTWrapper

    low, high = _STRENGTH["min"], _STRENGTH["max"]
    if (
        isinstance(lora_strength, bool)
        or not isinstance(lora_strength, (int, float))
        or not (low <= lora_strength <= high)
    ):  # NaN fails the comparison; ComfyUI's own range check lets NaN through
        raise ValueError(f"`lora_strength` must be a number in [{low}, {high}], got {lora_strength!r}")
    folder = os.path.expanduser(reward_adapter.strip())
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f"`reward_adapter` must be a trainer's reward_lora/ folder, got {reward_adapter!r}")
    modules = RewardDiTModules.from_adapter_folder(folder)
    object_patches = modules.object_patches(diffusion_model_of(model))

    import comfy.lora
    import comfy.lora_convert
    import comfy.patcher_extension
    import comfy.utils

    if model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY):
        raise ValueError(
            "`model` already carries a reward adapter (a Reward DiT Adapter Loader upstream); apply one adapter per "
            "model, to the model from the diffusion-model loader"
        )
    patched = model.clone()
    lora_path = os.path.join(folder, LORA_FILE)
    if os.path.isfile(lora_path) and lora_strength != 0.0:
        lora = comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(lora_path, safe_load=True))
        key_map = comfy.lora.model_lora_keys_unet(patched.model, {})
        unmatched = sorted({key.rsplit(".lora_", 1)[0] for key in lora if ".lora_" in key} - set(key_map))
        if unmatched:
            raise ValueError(f"{lora_path}: LoRA layers this model does not have: {unmatched[:5]}")
        lora.update(lora_alpha_entries(folder, lora))
        patched.add_patches(comfy.lora.load_lora(lora, key_map), lora_strength)
    for key, value in object_patches.items():
        patched.add_object_patch(key, value)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, RewardDiTWrapper(modules)
    )
    return patched


# ------------------------------------------------------------------------------------------------------------ V1
class RewardDiTCondition:
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("reward_conditioning",)
    DESCRIPTION = DIT_DESCRIPTIONS["RewardDiTCondition"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "clip": ("CLIP",),
                "following": ("FLOAT", dict(_SCORE)),
                "preserving": ("FLOAT", dict(_SCORE)),
                "quality": ("FLOAT", dict(_SCORE)),
                "reward_guidance_scale": ("FLOAT", dict(_GUIDANCE)),
            },
            "optional": {"failure_text": ("STRING", {"default": "", "multiline": True})},
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (run_condition(**inputs),)


class RewardDiTAdapterLoader:
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("reward_model",)
    DESCRIPTION = DIT_DESCRIPTIONS["RewardDiTAdapterLoader"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        return {
            "required": {
                "model": ("MODEL",),
                "reward_adapter": ("STRING", {"default": "", "multiline": False}),
                "lora_strength": ("FLOAT", dict(_STRENGTH)),
            }
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (run_adapter_loader(**inputs),)


V1_DIT_NODES: tuple[type, ...] = (RewardDiTCondition, RewardDiTAdapterLoader)


def v3_dit_nodes() -> tuple[type, ...]:
    """The V3 classes (``comfy_api.v0_0_2``), built on demand where that API exists."""
    from comfy_api.v0_0_2 import io

    def schema(node_id: str, inputs: list, outputs: list) -> Any:
        return io.Schema(
            node_id=node_id,
            display_name=DIT_DISPLAY_NAMES[node_id],
            category=CATEGORY,
            description=DIT_DESCRIPTIONS[node_id],
            inputs=inputs,
            outputs=outputs,
        )

    class RewardDiTConditionV3(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> Any:
            return schema(
                "RewardDiTCondition",
                [
                    io.Conditioning.Input("conditioning"),
                    io.Clip.Input("clip"),
                    io.Float.Input("following", **_SCORE),
                    io.Float.Input("preserving", **_SCORE),
                    io.Float.Input("quality", **_SCORE),
                    io.Float.Input("reward_guidance_scale", **_GUIDANCE),
                    io.String.Input("failure_text", default="", multiline=True, optional=True),
                ],
                [io.Conditioning.Output("reward_conditioning", display_name="reward_conditioning")],
            )

        @classmethod
        def execute(cls, **inputs: Any) -> Any:
            return io.NodeOutput(run_condition(**inputs))

    class RewardDiTAdapterLoaderV3(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> Any:
            return schema(
                "RewardDiTAdapterLoader",
                [
                    io.Model.Input("model"),
                    io.String.Input("reward_adapter", default=""),
                    io.Float.Input("lora_strength", **_STRENGTH),
                ],
                [io.Model.Output("reward_model", display_name="reward_model")],
            )

        @classmethod
        def execute(cls, **inputs: Any) -> Any:
            return io.NodeOutput(run_adapter_loader(**inputs))

    RewardDiTConditionV3.__name__ = "RewardDiTCondition"
    RewardDiTAdapterLoaderV3.__name__ = "RewardDiTAdapterLoader"
    return (RewardDiTConditionV3, RewardDiTAdapterLoaderV3)
