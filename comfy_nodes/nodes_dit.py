"""ComfyUI nodes for reward conditioning of DiT editors loaded with ComfyUI's own loaders (FLUX.1 Kontext).

- ``RewardDiTCondition`` (CONDITIONING, CLIP, scores, failure text, reward guidance → CONDITIONING): puts the reward
  on each conditioning entry's ``model_conds`` (`comfy_nodes.dit_patch.pack_reward_condition`); the failure text is
  embedded with the workflow's CLIP (its pooled output — for FLUX the CLIP-L pooled output, as the library's
  `RewardFluxKontextPipeline` does).
- ``RewardDiTAdapterLoader`` (MODEL, trainer ``reward_lora/`` folder, LoRA strength → MODEL): applies the trainer's
  LoRA with ComfyUI's LoRA loader and patches the model (`comfy_nodes.dit_patch`).

V1 classes (``INPUT_TYPES``) and V3 classes (``comfy_api.v0_0_2``) share the two ``run_*`` functions below, as the
rest of the pack does. ComfyUI modules are imported inside the functions (they exist only inside ComfyUI).
"""

from __future__ import annotations

import os
from typing import Any

from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT, resolve_failure_text

from .core import make_reward_condition

CATEGORY = "reward_edit/dit"
DIT_DISPLAY_NAMES: dict[str, str] = {
    "RewardDiTCondition": "Reward DiT Condition",
    "RewardDiTAdapterLoader": "Reward DiT Adapter Loader",
}
DIT_DESCRIPTIONS: dict[str, str] = {
    "RewardDiTCondition": "Attach multi-reward scores and failure text to a FLUX.1 Kontext conditioning "
    "(use it on every conditioning the patched model samples with).",
    "RewardDiTAdapterLoader": "Apply a reward adapter trained by `reward-edit train --backbone flux-kontext` "
    "(its reward_lora/ folder: LoRA + reward modules) to a FLUX.1 model from ComfyUI's loaders.",
}
_SCORE = {"default": 5.0, "min": 0.0, "max": 5.0, "step": 0.5}
_GUIDANCE = {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1}
_STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}


def encode_failure_text(clip: Any, failure_text: str | None) -> Any:
    """The pooled embedding ``[1, D]`` of the failure text (blank/absent → the library's "no failure" text)."""
    text = resolve_failure_text(failure_text, DEFAULT_NO_FAILURE_TEXT)
    _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if pooled is None:
        raise ValueError("`clip` gives no pooled output; the FLUX reward adapter embeds the failure text with CLIP-L")
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


def run_adapter_loader(model: Any, reward_adapter: str, lora_strength: float = 1.0) -> Any:
    """``RewardDiTAdapterLoader``: a clone of `model` with the adapter's LoRA patches, object patches and wrapper."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.patcher_extension
    import comfy.utils

    from .dit_patch import LORA_FILE, WRAPPER_KEY, FluxRewardModules, FluxRewardWrapper, flux_object_patches

    folder = os.path.expanduser(reward_adapter.strip())
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f"`reward_adapter` must be a trainer's reward_lora/ folder, got {reward_adapter!r}")
    modules = FluxRewardModules.from_adapter_folder(folder)
    diffusion_model = model.get_model_object("diffusion_model")
    modules.check_flux_model(diffusion_model)
    patched = model.clone()
    lora_path = os.path.join(folder, LORA_FILE)
    if os.path.isfile(lora_path) and lora_strength != 0.0:
        lora = comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(lora_path, safe_load=True))
        key_map = comfy.lora.model_lora_keys_unet(patched.model, {})
        unmatched = sorted({key.rsplit(".lora_", 1)[0] for key in lora if ".lora_" in key} - set(key_map))
        if unmatched:
            raise ValueError(f"{lora_path}: LoRA layers this model does not have: {unmatched[:5]}")
        patched.add_patches(comfy.lora.load_lora(lora, key_map), lora_strength)
    for key, value in flux_object_patches(diffusion_model).items():
        patched.add_object_patch(key, value)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, FluxRewardWrapper(modules)
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
