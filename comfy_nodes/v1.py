"""V1 node classes (``INPUT_TYPES``/``RETURN_TYPES``/``FUNCTION``), for ComfyUI builds without ``comfy_api.v0_0_2``.

Each class declares its inputs in widget order (saved workflows store widget values by position) and hands the inputs,
by name, to the node's one implementation in `comfy_nodes.runtime`. `comfy_nodes.v3` declares the same nodes for the V3
API; ``tests/test_comfy_nodes.py`` checks both declarations against each other in a real ComfyUI 0.3.75.
"""

from __future__ import annotations

from typing import Any

from . import runtime
from .core import make_reward_condition
from .texts import (
    CATEGORY,
    CONDITION_DESCRIPTION,
    CONDITION_TOOLTIPS,
    CONDITION_TYPE,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    EDIT_DESCRIPTION,
    EDIT_TOOLTIPS,
    JUDGE_DESCRIPTION,
    JUDGE_TOOLTIPS,
    LOADER_DESCRIPTION,
    LOADER_TOOLTIPS,
    MAX_SEED,
    PIPE_TYPE,
)


class RewardEditLoader:
    DESCRIPTION = LOADER_DESCRIPTION
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPE_TYPE,)
    RETURN_NAMES = ("pipe",)
    OUTPUT_TOOLTIPS = (LOADER_TOOLTIPS["pipe"],)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        tips = LOADER_TOOLTIPS
        return {
            "required": {
                "model": (runtime.loader_model_options(), {"tooltip": tips["model"]}),
                "hub_id": ("STRING", {"default": "", "multiline": False, "tooltip": tips["hub_id"]}),
                "device": (list(DEVICE_CHOICES), {"default": "auto", "tooltip": tips["device"]}),
                "dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": tips["dtype"]}),
            }
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (runtime.load_pipe(**inputs),)


class RewardCondition:
    DESCRIPTION = CONDITION_DESCRIPTION
    CATEGORY = CATEGORY
    RETURN_TYPES = (CONDITION_TYPE,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = (CONDITION_TOOLTIPS["reward"],)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        tips = CONDITION_TOOLTIPS
        score = {"default": 5.0, "min": 0.0, "max": 5.0, "step": 0.5}
        return {
            "required": {
                "following": ("FLOAT", {**score, "tooltip": tips["following"]}),
                "preserving": ("FLOAT", {**score, "tooltip": tips["preserving"]}),
                "quality": ("FLOAT", {**score, "tooltip": tips["quality"]}),
            },
            "optional": {
                "failure_text": ("STRING", {"default": "", "multiline": True, "tooltip": tips["failure_text"]}),
            },
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (make_reward_condition(**inputs),)


class RewardEdit:
    DESCRIPTION = EDIT_DESCRIPTION
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("edited",)
    OUTPUT_TOOLTIPS = (EDIT_TOOLTIPS["edited"],)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        tips = EDIT_TOOLTIPS
        return {
            "required": {
                "pipe": (PIPE_TYPE, {"tooltip": tips["pipe"]}),
                "image": ("IMAGE", {"tooltip": tips["image"]}),
                "instruction": ("STRING", {"default": "", "multiline": True, "tooltip": tips["instruction"]}),
                "reward": (CONDITION_TYPE, {"tooltip": tips["reward"]}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "step": 1, "tooltip": tips["steps"]}),
                "guidance_scale": (
                    "FLOAT",
                    {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": tips["guidance_scale"]},
                ),
                "image_guidance_scale": (
                    "FLOAT",
                    {"default": 1.5, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": tips["image_guidance_scale"]},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 42,
                        "min": 0,
                        "max": MAX_SEED,
                        "step": 1,
                        "control_after_generate": True,
                        "tooltip": tips["seed"],
                    },
                ),
                "reward_guidance_scale": (
                    "FLOAT",
                    {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1, "tooltip": tips["reward_guidance_scale"]},
                ),
            }
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (runtime.edit(**inputs),)


class RewardJudge:
    DESCRIPTION = JUDGE_DESCRIPTION
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("following", "preserving", "quality", "feedback")
    OUTPUT_TOOLTIPS = tuple(JUDGE_TOOLTIPS[name] for name in RETURN_NAMES)
    FUNCTION = "execute"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        tips = JUDGE_TOOLTIPS
        return {
            "required": {
                "original": ("IMAGE", {"tooltip": tips["original"]}),
                "edited": ("IMAGE", {"tooltip": tips["edited"]}),
                "instruction": ("STRING", {"default": "", "multiline": True, "tooltip": tips["instruction"]}),
                "model": ("STRING", {"default": "gpt-4o", "multiline": False, "tooltip": tips["model"]}),
                "base_url": ("STRING", {"default": "", "multiline": False, "tooltip": tips["base_url"]}),
            }
        }

    def execute(self, **inputs: Any) -> dict[str, Any]:
        outputs = runtime.judge(**inputs)
        return {"ui": {"text": [outputs.feedback]}, "result": outputs.as_tuple()}


V1_NODES: tuple[type, ...] = (RewardEditLoader, RewardCondition, RewardEdit, RewardJudge)
