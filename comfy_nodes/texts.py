"""What the ComfyUI user reads: the category, socket types, node names and descriptions, and one tooltip per input
and output. The V1 classes (`comfy_nodes.v1`) and the V3 classes (`comfy_nodes.v3`) both take their text from here,
so the two APIs show the same words. No ComfyUI import.
"""

from __future__ import annotations

CATEGORY = "reward_edit"
PIPE_TYPE = "REWARD_EDIT_PIPE"
CONDITION_TYPE = "REWARD_CONDITION"

#: the combo entry of `RewardEditLoader.model` that means "load the repository named in `hub_id`"
HUB_ID_CHOICE = "(Hub id)"
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu")
#: the names `reward_edit_pipeline.devices` accepts (the CLI offers the long forms float32/float16/bfloat16)
DTYPE_CHOICES: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")

DISPLAY_NAMES: dict[str, str] = {
    "RewardEditLoader": "Reward Edit Loader",
    "RewardCondition": "Reward Condition",
    "RewardEdit": "Reward Edit",
    "RewardJudge": "Reward Judge",
}

# ------------------------------------------------------------------------------------------------ RewardEditLoader
_LOADER_DESCRIPTION = (
    "Loads a multi-reward InstructPix2Pix pipeline (Gu et al., ICLR 2025) from ComfyUI's models/diffusers folder "
    "or from the Hugging Face Hub. The pipeline stays cached between runs; with device 'auto' ComfyUI's model "
    "management moves it onto the GPU for each edit and offloads it when other models need the memory."
)
_LOADER_TOOLTIPS: dict[str, str] = {
    "model": (
        "A pipeline folder (one holding model_index.json) inside models/diffusers, or "
        f"'{HUB_ID_CHOICE}' to load the repository named in hub_id. Accepted: our saved pipelines, stock "
        "InstructPix2Pix folders and official Multi-Reward-Editing release folders."
    ),
    "hub_id": (
        f"Hugging Face Hub repository id ('owner/name'), used only when model is '{HUB_ID_CHOICE}'; leave empty "
        "otherwise. Downloads go to the Hugging Face cache."
    ),
    "device": "'auto': ComfyUI's device under its model management (GPU when available); 'cpu': always on the CPU.",
    "dtype": (
        "Weight precision. 'auto': fp16 where ComfyUI runs its device in fp16 (a GPU), else fp32 "
        "(the paper evaluated in fp16). fp16 on the CPU is refused (use fp32 or bf16), as in Python and the CLI."
    ),
    "pipe": "The loaded reward-conditioned editing pipeline.",
}

# ------------------------------------------------------------------------------------------------ RewardCondition
_CONDITION_DESCRIPTION = (
    "The reward condition of an edit: target scores for instruction following, detail preserving and generation "
    "quality (0-5), plus an optional failure text. Scores of 5 with an empty failure text are the paper's "
    "'no failure' condition."
)
_SCORE_TOOLTIP = (
    "Target {what} score, 0 (worst) to 5 (best). The model was trained with the judge's scores as conditions; "
    "5 asks for the best {what} (the paper's inference setting is 5, 5, 5)."
)
_CONDITION_TOOLTIPS: dict[str, str] = {
    "following": _SCORE_TOOLTIP.format(what="instruction-following"),
    "preserving": _SCORE_TOOLTIP.format(what="detail-preserving"),
    "quality": _SCORE_TOOLTIP.format(what="generation-quality"),
    "failure_text": (
        "Failure points to condition on, as 'following; preserving; quality' (the format of the judge's feedback). "
        "Empty or blank = no failure text: the model's 'no failure' text ('None; None; None' for the paper's "
        "weights), exactly as failure_text=None in Python and no --failure-text in the CLI."
    ),
    "reward": "Scores and failure text for Reward Edit.",
}

# ------------------------------------------------------------------------------------------------ RewardEdit
_EDIT_DESCRIPTION = (
    "Edits every image of the batch following the instruction, conditioned on the reward condition "
    "(InstructPix2Pix with multi-reward conditioning). Image i of a batch uses seed + i. Any width and height: "
    "the edited image has the input's exact size (padded for the model, cropped back), as in Python and the CLI."
)
_EDIT_TOOLTIPS: dict[str, str] = {
    "pipe": "The pipeline from Reward Edit Loader.",
    "image": "The image(s) to edit; every image of a batch is edited.",
    "instruction": "The editing instruction, e.g. 'make it look like winter'.",
    "reward": "Target scores and failure text from Reward Condition.",
    "steps": "Denoising steps (the paper uses 30).",
    "guidance_scale": "Text (instruction) guidance; higher follows the instruction more strongly (paper: 7.5).",
    "image_guidance_scale": (
        "Image guidance; higher keeps closer to the input image (paper: 1.5). Guidance needs this >= 1."
    ),
    "seed": "Random seed of the first image; image i of a batch uses seed + i.",
    "reward_guidance_scale": "Extra guidance towards the reward condition; 1 = off (the paper's setting).",
    "edited": "The edited images, same batch size and size as the input.",
}

# ------------------------------------------------------------------------------------------------ RewardJudge
_JUDGE_DESCRIPTION = (
    "Grades an edit with an LVLM judge behind an OpenAI-compatible API, from the paper's three perspectives: "
    "instruction following, detail preserving, generation quality (0-5 each), plus the failure points. "
    "The API key is read from the OPENAI_API_KEY environment variable only, never from the workflow."
)
_JUDGE_TOOLTIPS: dict[str, str] = {
    "original": "The image before editing (1 image, or one per edited image).",
    "edited": "The edited image(s).",
    "instruction": "The instruction the edit was made from.",
    "model": "Judge model name sent to the API, e.g. 'gpt-4o'.",
    "base_url": ("API root of an OpenAI-compatible server (e.g. 'http://localhost:8000/v1' for vLLM); empty = OpenAI."),
    "following": "Instruction-following score (mean over the batch).",
    "preserving": "Detail-preserving score (mean over the batch).",
    "quality": "Generation-quality score (mean over the batch).",
    "feedback": (
        "Failure points per image, one line each, as 'following; preserving; quality' (usable as failure_text)."
    ),
}

#: node id → description shown on the node
DESCRIPTIONS: dict[str, str] = {
    "RewardEditLoader": _LOADER_DESCRIPTION,
    "RewardCondition": _CONDITION_DESCRIPTION,
    "RewardEdit": _EDIT_DESCRIPTION,
    "RewardJudge": _JUDGE_DESCRIPTION,
}
#: node id → input or output name → tooltip
TOOLTIPS: dict[str, dict[str, str]] = {
    "RewardEditLoader": _LOADER_TOOLTIPS,
    "RewardCondition": _CONDITION_TOOLTIPS,
    "RewardEdit": _EDIT_TOOLTIPS,
    "RewardJudge": _JUDGE_TOOLTIPS,
}
