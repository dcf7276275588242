"""V3 node classes (`comfy_api` ``io.ComfyNode``), for ComfyUI builds that provide ``comfy_api.latest``.

Imported only when ``comfy_api.latest`` exists (see `comfy_nodes.__init__`). Same node ids, input names and widget
order as the V1 classes: both are generated from `comfy_nodes.specs`.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import ComfyExtension, io

from . import runtime
from .core import make_reward_condition
from .specs import CONDITION, EDIT, JUDGE, LOADER, InputSpec, NodeSpec, OutputSpec

_BUILTIN_TYPES = {"FLOAT": io.Float, "INT": io.Int, "STRING": io.String, "IMAGE": io.Image, "COMBO": io.Combo}
_CUSTOM_TYPES: dict[str, Any] = {}


def _io_type(name: str) -> Any:
    if name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[name]
    if name not in _CUSTOM_TYPES:
        _CUSTOM_TYPES[name] = io.Custom(name)
    return _CUSTOM_TYPES[name]


def v3_input(spec: InputSpec) -> io.Input:
    common = {"tooltip": spec.tooltip, "optional": spec.optional}
    if spec.io_type == "COMBO":
        choices = spec.option_list()
        default = spec.default if spec.default is not None else (choices[0] if choices else None)
        return io.Combo.Input(spec.name, options=choices, default=default, **common)
    if spec.io_type == "FLOAT":
        return io.Float.Input(
            spec.name, default=spec.default, min=spec.minimum, max=spec.maximum, step=spec.step, **common
        )
    if spec.io_type == "INT":
        return io.Int.Input(
            spec.name,
            default=spec.default,
            min=spec.minimum,
            max=spec.maximum,
            step=spec.step,
            control_after_generate=spec.control_after_generate or None,
            **common,
        )
    if spec.io_type == "STRING":
        return io.String.Input(spec.name, default=spec.default, multiline=spec.multiline, **common)
    return _io_type(spec.io_type).Input(spec.name, **common)


def v3_output(spec: OutputSpec) -> io.Output:
    return _io_type(spec.io_type).Output(spec.name, display_name=spec.name, tooltip=spec.tooltip)


def v3_schema(spec: NodeSpec) -> io.Schema:
    return io.Schema(
        node_id=spec.node_id,
        display_name=spec.display_name,
        category=spec.category,
        description=spec.description,
        inputs=[v3_input(i) for i in spec.inputs],
        outputs=[v3_output(o) for o in spec.outputs],
        is_output_node=spec.output_node,
    )


class RewardEditLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema(LOADER)

    @classmethod
    def execute(cls, model: str, hub_id: str, device: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(runtime.load_pipe(model, hub_id, device, dtype))


class RewardCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema(CONDITION)

    @classmethod
    def execute(cls, following: float, preserving: float, quality: float, failure_text: str = "") -> io.NodeOutput:
        return io.NodeOutput(make_reward_condition(following, preserving, quality, failure_text))


class RewardEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema(EDIT)

    @classmethod
    def execute(
        cls,
        pipe: Any,
        image: Any,
        instruction: str,
        reward: Any,
        steps: int,
        guidance_scale: float,
        image_guidance_scale: float,
        seed: int,
        reward_guidance_scale: float,
    ) -> io.NodeOutput:
        return io.NodeOutput(
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
            )
        )


class RewardJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return v3_schema(JUDGE)

    @classmethod
    def execute(cls, original: Any, edited: Any, instruction: str, model: str, base_url: str) -> io.NodeOutput:
        outputs = runtime.judge(original, edited, instruction, model, base_url)
        return io.NodeOutput(*outputs.as_tuple(), ui={"text": [outputs.feedback]})


V3_NODES: tuple[type[io.ComfyNode], ...] = (RewardEditLoader, RewardCondition, RewardEdit, RewardJudge)


class RewardEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(V3_NODES)


async def comfy_entrypoint() -> RewardEditExtension:
    return RewardEditExtension()
