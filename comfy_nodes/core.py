"""Node logic as plain functions: no ComfyUI import, so every behaviour is testable outside a server.

ComfyUI conventions followed here:
- an ``IMAGE`` is a float tensor ``[B, H, W, C]`` with values in [0, 1] and ``C == 3``;
- node errors are plain exceptions whose message ComfyUI shows to the user, so each names the input and the
  accepted values.

The thin shells in `comfy_nodes.v1` / `comfy_nodes.v3` (and the ComfyUI bridge in `comfy_nodes.runtime`) call these.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from reward_edit_pipeline.rewards import MAX_SCORE, MIN_SCORE, PERSPECTIVES, validate_score_triple

from .texts import DTYPE_CHOICES, HUB_ID_CHOICE, MAX_SEED

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: how deep below a models/diffusers folder a pipeline folder (one holding ``model_index.json``) is looked for
PIPELINE_FOLDER_DEPTH = 2
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------------------------------
# RewardCondition
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardCondition:
    """The value of a ``REWARD_CONDITION`` socket.

    Attributes:
        scores: (following, preserving, quality), each in [0, 5].
        failure_text: the failure text to condition on, or ``None`` for the loaded model's "no failure" convention
            (``"None; None; None"`` for the paper's weights).
    """

    scores: tuple[float, float, float]
    failure_text: str | None = None


def make_reward_condition(
    following: float, preserving: float, quality: float, failure_text: str = ""
) -> RewardCondition:
    """Build the condition of `RewardCondition`; an empty ``failure_text`` means "no failure" (the paper's default)."""
    scores = validate_score_triple((following, preserving, quality), name="reward scores")
    if failure_text is None:
        failure_text = ""
    if not isinstance(failure_text, str):
        raise TypeError(f"`failure_text` must be a string, got {type(failure_text).__name__}")
    failure_text = failure_text.strip()
    return RewardCondition(scores=scores, failure_text=failure_text or None)


# --------------------------------------------------------------------------------------------------------------------
# IMAGE tensors
# --------------------------------------------------------------------------------------------------------------------
def check_comfy_image(image: Any, name: str = "image", multiple_of: int = 1) -> torch.Tensor:
    """Check a ComfyUI ``IMAGE`` (``[B, H, W, 3]`` float in [0, 1]) and return it; raise naming `name` otherwise."""
    import torch

    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`{name}` must be a ComfyUI IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(
            f"`{name}` must be a ComfyUI IMAGE tensor [B, H, W, C] (4 dims), got shape {tuple(image.shape)}"
        )
    batch, height, width, channels = image.shape
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"`{name}` is empty: shape {tuple(image.shape)}")
    if channels != 3:
        raise ValueError(
            f"`{name}` must have 3 (RGB) channels in the last dimension, got {channels} (shape {tuple(image.shape)})"
        )
    if not image.is_floating_point():
        raise TypeError(f"`{name}` must be a float tensor with values in [0, 1], got dtype {image.dtype}")
    low, high = float(image.min()), float(image.max())
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
        raise ValueError(f"`{name}` values must lie in [0, 1], got min {low:g} and max {high:g}")
    if multiple_of > 1 and (height % multiple_of or width % multiple_of):
        fit_width = width // multiple_of * multiple_of or multiple_of
        fit_height = height // multiple_of * multiple_of or multiple_of
        raise ValueError(
            f"`{name}` height and width must be multiples of {multiple_of} for this model, got {width}x{height} "
            f"(W x H); resize it first, e.g. with the 'Upscale Image' node to {fit_width}x{fit_height}"
        )
    return image


def comfy_image_to_pil(image: torch.Tensor) -> list[Any]:
    """``[B, H, W, 3]`` float [0, 1] → a list of RGB PIL images (rounded to 8 bits, as ComfyUI's SaveImage does)."""
    import numpy as np
    from PIL import Image

    image = check_comfy_image(image)
    arrays = (image.detach().float().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return [Image.fromarray(array, mode="RGB") for array in arrays]


# --------------------------------------------------------------------------------------------------------------------
# RewardEdit
# --------------------------------------------------------------------------------------------------------------------
StepHook = Callable[[int, int], None]


def check_edit_settings(
    instruction: str,
    steps: int,
    guidance_scale: float,
    image_guidance_scale: float,
    seed: int,
    reward_guidance_scale: float,
) -> str:
    """Validate the scalar inputs of `RewardEdit`; returns the stripped instruction."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("`instruction` must be a non-empty text describing the edit, e.g. 'make it snowy'")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}")
    for name, value, lowest in (
        ("guidance_scale", guidance_scale, 0.0),
        ("image_guidance_scale", image_guidance_scale, 0.0),
        ("reward_guidance_scale", reward_guidance_scale, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lowest:
            raise ValueError(f"`{name}` must be a finite number >= {lowest:g}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return instruction.strip()


def edit_images(
    pipeline: Any,
    image: torch.Tensor,
    instruction: str,
    reward: RewardCondition,
    steps: int = 30,
    guidance_scale: float = 7.5,
    image_guidance_scale: float = 1.5,
    seed: int = 42,
    reward_guidance_scale: float = 1.0,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """Edit every image of a ComfyUI ``IMAGE`` batch with one instruction and one reward condition.

    Image ``i`` of the batch uses a CPU generator seeded with ``(seed + i) mod 2**64``, so a batch gives the same
    images as editing each one alone with those seeds.

    Args:
        pipeline: a loaded `RewardEditPipeline`.
        image (`torch.Tensor`): ``[B, H, W, 3]`` float in [0, 1]; H and W multiples of the VAE scale factor.
        on_step (`Callable[[int, int], None]`, *optional*): called after every denoising step with
            ``(steps done over the whole batch, total steps)``; it may raise to cancel (ComfyUI's interruption).

    Returns:
        `torch.Tensor`: the edited images, ``[B, H, W, 3]`` float32 in [0, 1] on the CPU.
    """
    import torch

    if not isinstance(reward, RewardCondition):
        raise TypeError(
            f"`reward` must come from a RewardCondition node (REWARD_CONDITION), got {type(reward).__name__}"
        )
    instruction = check_edit_settings(
        instruction, steps, guidance_scale, image_guidance_scale, seed, reward_guidance_scale
    )
    multiple_of = int(getattr(pipeline, "vae_scale_factor", 8))
    image = check_comfy_image(image, "image", multiple_of=multiple_of)
    batch, height, width, _ = image.shape
    total_steps = batch * steps
    edited: list[torch.Tensor] = []
    for index in range(batch):
        done_before = index * steps

        def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any], _done: int = done_before):
            if on_step is not None:
                on_step(min(_done + step + 1, total_steps), total_steps)
            return callback_kwargs

        pixels = image[index : index + 1].permute(0, 3, 1, 2).float().cpu().contiguous()  # [1, 3, H, W] in [0, 1]
        generator = torch.Generator(device="cpu").manual_seed((seed + index) % (MAX_SEED + 1))
        output = pipeline(
            prompt=instruction,
            image=pixels,
            reward_scores=reward.scores,
            failure_text=reward.failure_text,
            num_inference_steps=steps,
            guidance_scale=float(guidance_scale),
            image_guidance_scale=float(image_guidance_scale),
            reward_guidance_scale=float(reward_guidance_scale),
            generator=generator,
            output_type="pt",
            callback_on_step_end=callback,
        )
        result = output.images if hasattr(output, "images") else output[0]
        result = result.detach().float().cpu().permute(0, 2, 3, 1)  # [1, H, W, 3]
        if tuple(result.shape[1:3]) != (height, width):
            raise RuntimeError(
                f"the pipeline returned a {result.shape[2]}x{result.shape[1]} image for a {width}x{height} input"
            )
        edited.append(result)  # diffusers' postprocess already maps the decoder output to [0, 1]
    if on_step is not None:
        on_step(total_steps, total_steps)
    return torch.cat(edited, dim=0).contiguous()


# --------------------------------------------------------------------------------------------------------------------
# RewardJudge
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeOutputs:
    """What `RewardJudge` returns: mean scores over the batch and one feedback line per image pair."""

    following: float
    preserving: float
    quality: float
    feedback: str

    def as_tuple(self) -> tuple[float, float, float, str]:
        return self.following, self.preserving, self.quality, self.feedback


def judge_images(judge: Any, original: torch.Tensor, edited: torch.Tensor, instruction: str) -> JudgeOutputs:
    """Grade each (original, edited) pair with the project's judge.

    ``original`` may hold one image (compared with every edited image) or as many images as ``edited``. The three
    score outputs are the means over the pairs; ``feedback`` holds, per pair, the joined failure text (the model's
    conditioning format ``"following; preserving; quality"``, ``None`` where nothing failed), one line per pair.
    A failed judgment (bad reply, unreachable server) raises with the judge's reason.
    """
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("`instruction` must be the non-empty editing instruction the edited image was made from")
    original = check_comfy_image(original, "original")
    edited = check_comfy_image(edited, "edited")
    n_original, n_edited = original.shape[0], edited.shape[0]
    if n_original not in (1, n_edited):
        raise ValueError(f"`original` must hold 1 image or as many as `edited` ({n_edited}), got {n_original} images")
    originals = comfy_image_to_pil(original)
    edits = comfy_image_to_pil(edited)
    totals = dict.fromkeys(PERSPECTIVES, 0.0)
    lines: list[str] = []
    for index, edited_image in enumerate(edits):
        original_image = originals[0] if n_original == 1 else originals[index]
        result = judge.judge(instruction.strip(), original_image, edited_image)
        if not result.ok:
            problems = "; ".join(
                f"{j.perspective}: {j.error} ({j.error_message or 'no detail'})" for j in result.judgments if not j.ok
            )
            raise RuntimeError(f"the judge could not grade image {index + 1} of {n_edited}: {problems}")
        for judgment in result.judgments:
            if not MIN_SCORE <= judgment.score <= MAX_SCORE:  # guarded by PerspectiveJudgment already
                raise RuntimeError(f"judge returned {judgment.perspective} score {judgment.score} outside [0, 5]")
            totals[judgment.perspective] += float(judgment.score)
        lines.append(result.failure_text)
    means = [totals[p] / n_edited for p in PERSPECTIVES]
    return JudgeOutputs(means[0], means[1], means[2], "\n".join(lines))


# --------------------------------------------------------------------------------------------------------------------
# RewardEditLoader
# --------------------------------------------------------------------------------------------------------------------
def list_pipeline_folders(
    model_roots: Sequence[str | os.PathLike[str]], depth: int = PIPELINE_FOLDER_DEPTH
) -> list[str]:
    """Names (``/``-separated, relative to a root) of the folders holding a ``model_index.json``.

    Looks ``depth`` levels below each root (a release such as ``Reward-InsPix2Pix/stage2_reward_instruct_pix2pix``
    is found), skips hidden folders, and follows links that the administrator placed inside a root.
    """
    names: set[str] = set()
    for root in model_roots:
        root = Path(root)
        if not root.is_dir():
            continue
        level = [root]
        for _ in range(depth):
            next_level = []
            for folder in level:
                try:
                    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
                for child in children:
                    if (child / "model_index.json").is_file():
                        names.add(child.relative_to(root).as_posix())
                    else:
                        next_level.append(child)
            level = next_level
    return sorted(names, key=str.lower)


def resolve_pipeline_folder(name: str, model_roots: Sequence[str | os.PathLike[str]]) -> Path:
    """Map a `model` combo value to its folder; the result is always inside one of ``model_roots``.

    Rejects absolute paths, ``..`` and anything that is not a listed pipeline folder, so a workflow or API request
    can never point the loader outside the models folder.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("`model` must name a pipeline folder inside models/diffusers")
    raw_parts = name.replace("\\", "/").split("/")
    pure = PurePosixPath(*raw_parts)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or any(p in ("..", ".", "") for p in raw_parts):
        raise ValueError(f"`model` must be a folder name inside models/diffusers, not a path: {name!r}")
    for root in model_roots:
        root = Path(root)
        candidate = root.joinpath(*pure.parts)
        if (
            candidate.is_dir()
            and (candidate / "model_index.json").is_file()
            and len(pure.parts) <= PIPELINE_FOLDER_DEPTH
        ):
            return candidate
    available = list_pipeline_folders(model_roots)
    raise ValueError(
        f"`model` {name!r} is not a pipeline folder (with model_index.json) in models/diffusers "
        f"({', '.join(str(r) for r in model_roots) or 'no folder configured'}); available: {available or 'none'}"
    )


def check_hub_id(hub_id: str) -> str:
    """Validate a Hugging Face Hub repository id (``owner/name``) and return it stripped."""
    if not isinstance(hub_id, str) or not hub_id.strip():
        raise ValueError(f"`hub_id` must be a Hub repository id such as 'owner/name' when `model` is {HUB_ID_CHOICE!r}")
    hub_id = hub_id.strip()
    if not _HUB_ID_PATTERN.match(hub_id) or ".." in hub_id or "--" in hub_id:
        raise ValueError(
            f"`hub_id` must be a Hub repository id 'owner/name' (letters, digits, '-', '_', '.'), got {hub_id!r}; "
            "local models go into models/diffusers and are chosen with `model`"
        )
    return hub_id


def resolve_model_source(model: str, hub_id: str, model_roots: Sequence[str | os.PathLike[str]]) -> tuple[str, bool]:
    """``(source, is_local)`` for the loader's `model`/`hub_id` pair; exactly one of them names the model."""
    hub_id = hub_id if isinstance(hub_id, str) else ""
    if model == HUB_ID_CHOICE:
        hub_id = check_hub_id(hub_id)
        if os.path.exists(hub_id):  # the loader would take it for a folder relative to ComfyUI's working directory
            raise ValueError(
                f"`hub_id` {hub_id!r} names a local path relative to ComfyUI's working directory, not a Hub "
                "repository; put local pipelines into models/diffusers and choose them with `model`"
            )
        return hub_id, False
    if hub_id.strip():
        raise ValueError(
            f"`hub_id` is {hub_id.strip()!r} but `model` is the local folder {model!r}; choose {HUB_ID_CHOICE!r} as "
            "`model` to load from the Hub, or clear `hub_id`"
        )
    return str(resolve_pipeline_folder(model, model_roots)), True


def resolve_dtype(dtype: str, device: Any, fp16_supported: bool | None = None) -> torch.dtype:
    """``auto`` → float16 where ``fp16_supported`` (ComfyUI's verdict for the device; by default: any accelerator),
    float32 otherwise; ``fp32``/``fp16``/``bf16`` as named."""
    import torch

    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"`dtype` must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype == "auto":
        if fp16_supported is None:
            fp16_supported = torch.device(device).type != "cpu"
        return torch.float16 if fp16_supported else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def folder_fingerprint(folder: str | os.PathLike[str]) -> tuple[int, int]:
    """A cheap change marker of a pipeline folder: mtime and size of its ``model_index.json``."""
    stat = (Path(folder) / "model_index.json").stat()
    return stat.st_mtime_ns, stat.st_size


class PipelineCache:
    """Keeps the most recently loaded pipelines (``capacity`` of them) so re-running a graph does not reload.

    Loading a new pipeline when full drops the least recently used one first, so its memory can be reclaimed
    before the new weights are read.
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"`capacity` must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Any, Any] = OrderedDict()
        self.loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Any) -> bool:
        return key in self._entries

    def get_or_load(self, key: Any, load: Callable[[], Any], on_evict: Callable[[Any], None] | None = None) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        while len(self._entries) >= self.capacity:
            _, evicted = self._entries.popitem(last=False)
            if on_evict is not None:
                on_evict(evicted)
            del evicted
        value = load()
        self.loads += 1
        self._entries[key] = value
        return value

    def clear(self) -> None:
        self._entries.clear()
