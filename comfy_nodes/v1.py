"""V1 node classes (``INPUT_TYPES``/``RETURN_TYPES``/``FUNCTION``): what every ComfyUI build loads.

Thin shells: inputs come from `comfy_nodes.specs`, the work from `comfy_nodes.runtime`/`comfy_nodes.core`.
"""

from __future__ import annotations

from typing import Any

from . import runtime
from .core import make_reward_condition
from .specs import CONDITION, EDIT, JUDGE, LOADER, InputSpec, NodeSpec


def v1_input(spec: InputSpec) -> tuple:
    """One V1 input entry: ``(TYPE, options)``, or ``([choices], options)`` for a combo."""
    options: dict[str, Any] = {"tooltip": spec.tooltip}
    if spec.io_type == "COMBO":
        choices = spec.option_list()
        if spec.default is not None:
            options["default"] = spec.default
        elif choices:
            options["default"] = choices[0]
        return (choices, options)
    if spec.io_type in ("INT", "FLOAT"):
        options.update(default=spec.default, min=spec.minimum, max=spec.maximum, step=spec.step)
        if spec.control_after_generate:
            options["control_after_generate"] = True
    elif spec.io_type == "STRING":
        options.update(default=spec.default if spec.default is not None else "", multiline=spec.multiline)
    return (spec.io_type, options)


def v1_input_types(spec: NodeSpec) -> dict[str, dict[str, tuple]]:
    required = {i.name: v1_input(i) for i in spec.inputs if not i.optional}
    optional = {i.name: v1_input(i) for i in spec.inputs if i.optional}
    return {"required": required, "optional": optional} if optional else {"required": required}


class _V1Node:
    SPEC: NodeSpec

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:  # noqa: N802 (ComfyUI's name)
        return v1_input_types(cls.SPEC)


def from_spec(spec: NodeSpec, function: str):
    """Class decorator setting the V1 attributes (types, names, tooltips, category, description) from `spec`."""

    def decorate(cls: type[_V1Node]) -> type[_V1Node]:
        cls.SPEC = spec
        cls.RETURN_TYPES = tuple(o.io_type for o in spec.outputs)
        cls.RETURN_NAMES = tuple(o.name for o in spec.outputs)
        cls.OUTPUT_TOOLTIPS = tuple(o.tooltip for o in spec.outputs)
        cls.FUNCTION = function
        cls.CATEGORY = spec.category
        cls.DESCRIPTION = spec.description
        cls.OUTPUT_NODE = spec.output_node
        return cls

    return decorate


@from_spec(LOADER, "load")
class RewardEditLoader(_V1Node):
    def load(self, model: str, hub_id: str, device: str, dtype: str) -> tuple:
        return (runtime.load_pipe(model, hub_id, device, dtype),)


@from_spec(CONDITION, "condition")
class RewardCondition(_V1Node):
    def condition(self, following: float, preserving: float, quality: float, failure_text: str = "") -> tuple:
        return (make_reward_condition(following, preserving, quality, failure_text),)


@from_spec(EDIT, "edit")
class RewardEdit(_V1Node):
    def edit(
        self,
        pipe: Any,
        image: Any,
        instruction: str,
        reward: Any,
        steps: int,
        guidance_scale: float,
        image_guidance_scale: float,
        seed: int,
        reward_guidance_scale: float,
    ) -> tuple:
        return (
            runtime.edit(
                pipe,
                image,
                instruction,
                reward,
                steps,
                guidance_scale,
                image_guidance_scale,
                seed,
                reward_guidance_scale,
            ),
        )


@from_spec(JUDGE, "judge")
class RewardJudge(_V1Node):
    def judge(self, original: Any, edited: Any, instruction: str, model: str, base_url: str) -> dict[str, Any]:
        outputs = runtime.judge(original, edited, instruction, model, base_url)
        return {"ui": {"text": [outputs.feedback]}, "result": outputs.as_tuple()}


V1_NODES: tuple[type[_V1Node], ...] = (RewardEditLoader, RewardCondition, RewardEdit, RewardJudge)
