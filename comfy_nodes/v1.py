"""V1 node classes (``INPUT_TYPES``/``RETURN_TYPES``/``FUNCTION``), for ComfyUI builds without ``comfy_api.v0_0_2``.

Each class declares its inputs in widget order (saved workflows store widget values by position) and hands the inputs,
by name, to the node's one implementation (`comfy_nodes.runtime`, `comfy_nodes.core`). `comfy_nodes.v3` declares the
same nodes for the V3 API; ``tests/test_comfy_nodes.py`` checks both declarations against each other in a real
ComfyUI 0.3.75.
"""

from __future__ import annotations

from typing import Any

from reward_edit_pipeline.devices import MAX_SEED

from . import runtime
from .core import make_reward_condition
from .texts import CATEGORY, CONDITION_TYPE, DESCRIPTIONS, DEVICE_CHOICES, DTYPE_CHOICES, PIPE_TYPE, TOOLTIPS


class _V1Node:
    """What every V1 node here shares: category, function name, and its words from `comfy_nodes.texts`."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_NAMES: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.DESCRIPTION = DESCRIPTIONS[cls.__name__]
        cls.OUTPUT_TOOLTIPS = tuple(TOOLTIPS[cls.__name__][name] for name in cls.RETURN_NAMES)

    @classmethod
    def tooltip(cls, name: str) -> dict[str, str]:
        return {"tooltip": TOOLTIPS[cls.__name__][name]}


class RewardEditLoader(_V1Node):
    RETURN_TYPES = (PIPE_TYPE,)
    RETURN_NAMES = ("pipe",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        tip = cls.tooltip
        return {
            "required": {
                "model": (runtime.loader_model_options(), tip("model")),
                "hub_id": ("STRING", {"default": "", "multiline": False, **tip("hub_id")}),
                "device": (list(DEVICE_CHOICES), {"default": "auto", **tip("device")}),
                "dtype": (list(DTYPE_CHOICES), {"default": "auto", **tip("dtype")}),
            }
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (runtime.load_pipe(**inputs),)


class RewardCondition(_V1Node):
    RETURN_TYPES = (CONDITION_TYPE,)
    RETURN_NAMES = ("reward",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        tip = cls.tooltip
        score = {"default": 5.0, "min": 0.0, "max": 5.0, "step": 0.5}
        return {
            "required": {
                "following": ("FLOAT", {**score, **tip("following")}),
                "preserving": ("FLOAT", {**score, **tip("preserving")}),
                "quality": ("FLOAT", {**score, **tip("quality")}),
            },
            "optional": {"failure_text": ("STRING", {"default": "", "multiline": True, **tip("failure_text")})},
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (make_reward_condition(**inputs),)


class RewardEdit(_V1Node):
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("edited",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        tip = cls.tooltip
        return {
            "required": {
                "pipe": (PIPE_TYPE, tip("pipe")),
                "image": ("IMAGE", tip("image")),
                "instruction": ("STRING", {"default": "", "multiline": True, **tip("instruction")}),
                "reward": (CONDITION_TYPE, tip("reward")),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "step": 1, **tip("steps")}),
                "guidance_scale": (
                    "FLOAT",
                    {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, **tip("guidance_scale")},
                ),
                "image_guidance_scale": (
                    "FLOAT",
                    {"default": 1.5, "min": 0.0, "max": 10.0, "step": 0.05, **tip("image_guidance_scale")},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 42,
                        "min": 0,
                        "max": MAX_SEED,
                        "step": 1,
                        "control_after_generate": True,
                        **tip("seed"),
                    },
                ),
                "reward_guidance_scale": (
                    "FLOAT",
                    {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1, **tip("reward_guidance_scale")},
                ),
            }
        }

    def execute(self, **inputs: Any) -> tuple[Any]:
        return (runtime.edit(**inputs),)


class RewardJudge(_V1Node):
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("following", "preserving", "quality", "feedback")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        tip = cls.tooltip
        return {
            "required": {
                "original": ("IMAGE", tip("original")),
                "edited": ("IMAGE", tip("edited")),
                "instruction": ("STRING", {"default": "", "multiline": True, **tip("instruction")}),
                "model": ("STRING", {"default": "gpt-4o", "multiline": False, **tip("model")}),
                "base_url": ("STRING", {"default": "", "multiline": False, **tip("base_url")}),
            }
        }

    def execute(self, **inputs: Any) -> dict[str, Any]:
        outputs = runtime.judge(**inputs)
        return {"ui": {"text": [outputs.feedback]}, "result": outputs.as_tuple()}


V1_NODES: tuple[type, ...] = (RewardEditLoader, RewardCondition, RewardEdit, RewardJudge)
