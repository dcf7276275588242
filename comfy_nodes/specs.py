"""The four nodes described once, as data: ids, inputs (in widget order), outputs, descriptions and tooltips.

Both API shells are generated from these specs, so the V1 classes (every ComfyUI since 2023) and the V3 classes
(`comfy_api` ``io.ComfyNode``) always agree on node ids, input names and widget order — saved workflows store widget
values by position, so the order is part of the pack's contract. No ComfyUI import here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .core import DEVICE_CHOICES, DTYPE_CHOICES, HUB_ID_CHOICE, MAX_SEED

CATEGORY = "reward_edit"
PIPE_TYPE = "REWARD_EDIT_PIPE"
CONDITION_TYPE = "REWARD_CONDITION"


@dataclass(frozen=True)
class InputSpec:
    """One node input. ``io_type`` is a ComfyUI type (``FLOAT``, ``INT``, ``STRING``, ``COMBO``, ``IMAGE``) or ours."""

    name: str
    io_type: str
    tooltip: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    multiline: bool = False
    optional: bool = False
    options: Callable[[], list[str]] | Sequence[str] | None = None
    control_after_generate: bool = False

    def option_list(self) -> list[str]:
        if self.options is None:
            return []
        return list(self.options() if callable(self.options) else self.options)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    io_type: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    output_node: bool = False
    category: str = CATEGORY
    extra: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _model_options() -> list[str]:
    from .runtime import loader_model_options  # needs ComfyUI's folder_paths; only called inside a server

    return loader_model_options()


LOADER = NodeSpec(
    node_id="RewardEditLoader",
    display_name="Reward Edit Loader",
    description=(
        "Loads a multi-reward InstructPix2Pix pipeline (Gu et al., ICLR 2025) from ComfyUI's models/diffusers folder "
        "or from the Hugging Face Hub. The pipeline stays cached between runs; with device 'auto' ComfyUI's model "
        "management moves it onto the GPU for each edit and offloads it when other models need the memory."
    ),
    inputs=(
        InputSpec(
            "model",
            "COMBO",
            "A pipeline folder (one holding model_index.json) inside models/diffusers, or "
            f"'{HUB_ID_CHOICE}' to load the repository named in hub_id. Accepted: our saved pipelines, stock "
            "InstructPix2Pix folders and official Multi-Reward-Editing release folders.",
            options=_model_options,
        ),
        InputSpec(
            "hub_id",
            "STRING",
            f"Hugging Face Hub repository id ('owner/name'), used only when model is '{HUB_ID_CHOICE}'; leave empty "
            "otherwise. Downloads go to the Hugging Face cache.",
            default="",
        ),
        InputSpec(
            "device",
            "COMBO",
            "'auto': ComfyUI's device under its model management (GPU when available); 'cpu': always on the CPU.",
            default="auto",
            options=DEVICE_CHOICES,
        ),
        InputSpec(
            "dtype",
            "COMBO",
            "Weight precision. 'auto': fp16 where ComfyUI runs its device in fp16 (a GPU), else fp32 "
            "(the paper evaluated in fp16).",
            default="auto",
            options=DTYPE_CHOICES,
        ),
    ),
    outputs=(OutputSpec("pipe", PIPE_TYPE, "The loaded reward-conditioned editing pipeline."),),
)

_SCORE_TOOLTIP = (
    "Target {what} score, 0 (worst) to 5 (best). The model was trained with the judge's scores as conditions; "
    "5 asks for the best {what} (the paper's inference setting is 5, 5, 5)."
)

CONDITION = NodeSpec(
    node_id="RewardCondition",
    display_name="Reward Condition",
    description=(
        "The reward condition of an edit: target scores for instruction following, detail preserving and generation "
        "quality (0-5), plus an optional failure text. Scores of 5 with an empty failure text are the paper's "
        "'no failure' condition."
    ),
    inputs=(
        InputSpec("following", "FLOAT", _SCORE_TOOLTIP.format(what="instruction-following"), 5.0, 0.0, 5.0, 0.5),
        InputSpec("preserving", "FLOAT", _SCORE_TOOLTIP.format(what="detail-preserving"), 5.0, 0.0, 5.0, 0.5),
        InputSpec("quality", "FLOAT", _SCORE_TOOLTIP.format(what="generation-quality"), 5.0, 0.0, 5.0, 0.5),
        InputSpec(
            "failure_text",
            "STRING",
            "Failure points to condition on, as 'following; preserving; quality' (the format of the judge's feedback). "
            "Empty = the model's 'no failure' text ('None; None; None' for the paper's weights).",
            default="",
            multiline=True,
            optional=True,
        ),
    ),
    outputs=(OutputSpec("reward", CONDITION_TYPE, "Scores and failure text for Reward Edit."),),
)

EDIT = NodeSpec(
    node_id="RewardEdit",
    display_name="Reward Edit",
    description=(
        "Edits every image of the batch following the instruction, conditioned on the reward condition "
        "(InstructPix2Pix with multi-reward conditioning). Image i of a batch uses seed + i. Height and width must be "
        "multiples of 8."
    ),
    inputs=(
        InputSpec("pipe", PIPE_TYPE, "The pipeline from Reward Edit Loader."),
        InputSpec("image", "IMAGE", "The image(s) to edit; every image of a batch is edited."),
        InputSpec(
            "instruction",
            "STRING",
            "The editing instruction, e.g. 'make it look like winter'.",
            default="",
            multiline=True,
        ),
        InputSpec("reward", CONDITION_TYPE, "Target scores and failure text from Reward Condition."),
        InputSpec("steps", "INT", "Denoising steps (the paper uses 30).", 30, 1, 1000, 1),
        InputSpec(
            "guidance_scale",
            "FLOAT",
            "Text (instruction) guidance; higher follows the instruction more strongly (paper: 7.5).",
            7.5,
            0.0,
            30.0,
            0.1,
        ),
        InputSpec(
            "image_guidance_scale",
            "FLOAT",
            "Image guidance; higher keeps closer to the input image (paper: 1.5). Guidance needs this >= 1.",
            1.5,
            0.0,
            10.0,
            0.05,
        ),
        InputSpec(
            "seed",
            "INT",
            "Random seed of the first image; image i of a batch uses seed + i.",
            42,
            0,
            MAX_SEED,
            1,
            control_after_generate=True,
        ),
        InputSpec(
            "reward_guidance_scale",
            "FLOAT",
            "Extra guidance towards the reward condition; 1 = off (the paper's setting).",
            1.0,
            1.0,
            10.0,
            0.1,
        ),
    ),
    outputs=(OutputSpec("edited", "IMAGE", "The edited images, same batch size and size as the input."),),
)

JUDGE = NodeSpec(
    node_id="RewardJudge",
    display_name="Reward Judge",
    description=(
        "Grades an edit with an LVLM judge behind an OpenAI-compatible API, from the paper's three perspectives: "
        "instruction following, detail preserving, generation quality (0-5 each), plus the failure points. "
        "The API key is read from the OPENAI_API_KEY environment variable only, never from the workflow."
    ),
    inputs=(
        InputSpec("original", "IMAGE", "The image before editing (1 image, or one per edited image)."),
        InputSpec("edited", "IMAGE", "The edited image(s)."),
        InputSpec("instruction", "STRING", "The instruction the edit was made from.", default="", multiline=True),
        InputSpec("model", "STRING", "Judge model name sent to the API, e.g. 'gpt-4o'.", default="gpt-4o"),
        InputSpec(
            "base_url",
            "STRING",
            "API root of an OpenAI-compatible server (e.g. 'http://localhost:8000/v1' for vLLM); empty = OpenAI.",
            default="",
        ),
    ),
    outputs=(
        OutputSpec("following", "FLOAT", "Instruction-following score (mean over the batch)."),
        OutputSpec("preserving", "FLOAT", "Detail-preserving score (mean over the batch)."),
        OutputSpec("quality", "FLOAT", "Generation-quality score (mean over the batch)."),
        OutputSpec(
            "feedback",
            "STRING",
            "Failure points per image, one line each, as 'following; preserving; quality' (usable as failure_text).",
        ),
    ),
    output_node=True,
)

NODE_SPECS: tuple[NodeSpec, ...] = (LOADER, CONDITION, EDIT, JUDGE)
