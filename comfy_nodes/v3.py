"""V3 node classes (``io.ComfyNode``) against the pinned ``comfy_api.v0_0_2`` (ComfyUI 0.3.75 provides it; the moving
``comfy_api.latest`` is not used).

Imported only where ``comfy_api.v0_0_2`` exists (see `comfy_nodes.__init__`). Same node ids, input names, widget order
and words (`comfy_nodes.texts`) as the V1 classes in `comfy_nodes.v1`; each ``execute`` hands the inputs, by name, to
the node's one implementation (`comfy_nodes.runtime`, `comfy_nodes.core`).
"""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import ComfyExtension, io

from reward_edit_pipeline.devices import MAX_SEED

from . import runtime
from .core import make_reward_condition
from .texts import (
    CATEGORY,
    CONDITION_TYPE,
    DESCRIPTIONS,
    DEVICE_CHOICES,
    DISPLAY_NAMES,
    DTYPE_CHOICES,
    PIPE_TYPE,
    TOOLTIPS,
)

RewardEditPipe = io.Custom(PIPE_TYPE)
RewardConditionSocket = io.Custom(CONDITION_TYPE)


def _schema(node_id: str, inputs: list[io.Input], outputs: list[io.Output], **options: Any) -> io.Schema:
    """A schema with the node's display name, category and description from `comfy_nodes.texts`."""
    return io.Schema(
        node_id=node_id,
        display_name=DISPLAY_NAMES[node_id],
        category=CATEGORY,
        description=DESCRIPTIONS[node_id],
        inputs=inputs,
        outputs=outputs,
        **options,
    )


class RewardEditLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tips = TOOLTIPS["RewardEditLoader"]
        return _schema(
            "RewardEditLoader",
            inputs=[
                io.Combo.Input("model", options=runtime.loader_model_options(), tooltip=tips["model"]),
                io.String.Input("hub_id", default="", tooltip=tips["hub_id"]),
                io.Combo.Input("device", options=list(DEVICE_CHOICES), default="auto", tooltip=tips["device"]),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto", tooltip=tips["dtype"]),
            ],
            outputs=[RewardEditPipe.Output("pipe", display_name="pipe", tooltip=tips["pipe"])],
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        return io.NodeOutput(runtime.load_pipe(**inputs))


class RewardCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tips = TOOLTIPS["RewardCondition"]
        score = {"default": 5.0, "min": 0.0, "max": 5.0, "step": 0.5}
        return _schema(
            "RewardCondition",
            inputs=[
                io.Float.Input("following", **score, tooltip=tips["following"]),
                io.Float.Input("preserving", **score, tooltip=tips["preserving"]),
                io.Float.Input("quality", **score, tooltip=tips["quality"]),
                io.String.Input(
                    "failure_text", default="", multiline=True, optional=True, tooltip=tips["failure_text"]
                ),
            ],
            outputs=[RewardConditionSocket.Output("reward", display_name="reward", tooltip=tips["reward"])],
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        return io.NodeOutput(make_reward_condition(**inputs))


class RewardEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tips = TOOLTIPS["RewardEdit"]
        return _schema(
            "RewardEdit",
            inputs=[
                RewardEditPipe.Input("pipe", tooltip=tips["pipe"]),
                io.Image.Input("image", tooltip=tips["image"]),
                io.String.Input("instruction", default="", multiline=True, tooltip=tips["instruction"]),
                RewardConditionSocket.Input("reward", tooltip=tips["reward"]),
                io.Int.Input("steps", default=30, min=1, max=1000, step=1, tooltip=tips["steps"]),
                io.Float.Input(
                    "guidance_scale", default=7.5, min=0.0, max=30.0, step=0.1, tooltip=tips["guidance_scale"]
                ),
                io.Float.Input(
                    "image_guidance_scale",
                    default=1.5,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip=tips["image_guidance_scale"],
                ),
                io.Int.Input(
                    "seed", default=42, min=0, max=MAX_SEED, step=1, control_after_generate=True, tooltip=tips["seed"]
                ),
                io.Float.Input(
                    "reward_guidance_scale",
                    default=1.0,
                    min=1.0,
                    max=10.0,
                    step=0.1,
                    tooltip=tips["reward_guidance_scale"],
                ),
            ],
            outputs=[io.Image.Output("edited", display_name="edited", tooltip=tips["edited"])],
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        return io.NodeOutput(runtime.edit(**inputs))


class RewardJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tips = TOOLTIPS["RewardJudge"]
        return _schema(
            "RewardJudge",
            inputs=[
                io.Image.Input("original", tooltip=tips["original"]),
                io.Image.Input("edited", tooltip=tips["edited"]),
                io.String.Input("instruction", default="", multiline=True, tooltip=tips["instruction"]),
                io.String.Input("model", default="gpt-4o", tooltip=tips["model"]),
                io.String.Input("base_url", default="", tooltip=tips["base_url"]),
            ],
            outputs=[
                io.Float.Output("following", display_name="following", tooltip=tips["following"]),
                io.Float.Output("preserving", display_name="preserving", tooltip=tips["preserving"]),
                io.Float.Output("quality", display_name="quality", tooltip=tips["quality"]),
                io.String.Output("feedback", display_name="feedback", tooltip=tips["feedback"]),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        outputs = runtime.judge(**inputs)
        return io.NodeOutput(*outputs.as_tuple(), ui={"text": [outputs.feedback]})


V3_NODES: tuple[type[io.ComfyNode], ...] = (RewardEditLoader, RewardCondition, RewardEdit, RewardJudge)


class RewardEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(V3_NODES)


async def comfy_entrypoint() -> RewardEditExtension:
    return RewardEditExtension()
