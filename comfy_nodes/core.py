"""Node logic as plain functions: no ComfyUI import, so every behaviour is testable outside a server.

The rules themselves are the library's, the same for Python, the CLI and the nodes: reward scores
(`reward_edit_pipeline.rewards`), failure text (`reward_edit_pipeline.rewards.resolve_failure_text`, applied by the
pipeline), images (`reward_edit_pipeline.images`, applied by the pipeline), seeds and dtypes
(`reward_edit_pipeline.devices`). What is left here is ComfyUI's side: an ``IMAGE`` is a tensor ``[B, H, W, C]`` with
values in [0, 1]; node errors are plain exceptions whose message ComfyUI shows to the user.

numpy, PIL and torch are imported inside the functions, so importing the pack stays light.
The shells in `comfy_nodes.v1` / `comfy_nodes.v3` (and the ComfyUI bridge in `comfy_nodes.runtime`) call these.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from reward_edit_pipeline.devices import MAX_SEED, check_seed, make_generator
from reward_edit_pipeline.rewards import MAX_SCORE, MIN_SCORE, PERSPECTIVES, validate_score_triple

from .texts import DTYPE_CHOICES, HUB_ID_CHOICE

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

#: how deep below a models/diffusers folder a pipeline folder (one holding ``model_index.json``) is looked for
PIPELINE_FOLDER_DEPTH = 2
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------------------------------
# RewardCondition
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardCondition:
    """The value of a ``REWARD_CONDITION`` socket: the two reward arguments of the pipeline call, as the user gave
    them. The library applies its rules to them (`reward_edit_pipeline.rewards`), exactly as for a Python call.

    It is not a `reward_edit_pipeline.records.RewardRecord` (the rewards a judge gave a triplet, with three
    per-perspective texts): the node's ``failure_text`` is one free text, used as is, like ``failure_text="..."`` in
    Python and ``--failure-text`` in the CLI, which per-perspective texts cannot hold without changing it.

    Attributes:
        scores: (following, preserving, quality), each in [0, 5] (validated by
            `reward_edit_pipeline.rewards.validate_score_triple`).
        failure_text: the node's text unchanged, or ``None`` when the input is absent. ``None``, ``""`` and blank
            all mean "no failure text" (`reward_edit_pipeline.rewards.resolve_failure_text`).
    """

    scores: tuple[float, float, float]
    failure_text: str | None = None


def make_reward_condition(
    following: float, preserving: float, quality: float, failure_text: str | None = None
) -> RewardCondition:
    """`RewardCondition` node: validate the scores (the library's rule); keep the failure text for the pipeline."""
    scores = validate_score_triple((following, preserving, quality), name="reward scores")
    if failure_text is not None and not isinstance(failure_text, str):
        raise TypeError(f"`failure_text` must be a string, got {type(failure_text).__name__}")
    return RewardCondition(scores=scores, failure_text=failure_text)


# --------------------------------------------------------------------------------------------------------------------
# IMAGE tensors
# --------------------------------------------------------------------------------------------------------------------
def comfy_image_to_array(image: Any, name: str = "image") -> np.ndarray:
    """A ComfyUI ``IMAGE`` (tensor ``[B, H, W, C]``) → the same values as a numpy array ``[B, H, W, C]``.

    Only ComfyUI's own convention (a 4-dimensional tensor, channels last) is checked here; channels, dtype, value
    range and size are the library's image rules (`reward_edit_pipeline.images.array_to_float`), applied where the
    array is used, so an ``IMAGE`` is read exactly like the same numpy array in Python.
    """
    import torch

    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`{name}` must be a ComfyUI IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(
            f"`{name}` must be a ComfyUI IMAGE tensor [B, H, W, C] (4 dims), got shape {tuple(image.shape)}"
        )
    array = image.detach().cpu()
    return (array.float() if array.is_floating_point() else array).numpy()


def comfy_image_to_pil(image: Any, name: str = "image") -> list[Image.Image]:
    """A ComfyUI ``IMAGE`` → one 8-bit RGB PIL image per batch entry (the library's image rules, values rounded to
    8 bits as ComfyUI's SaveImage stores them)."""
    import numpy as np
    from PIL import Image

    from reward_edit_pipeline.images import array_to_float

    rgb = array_to_float(comfy_image_to_array(image, name), name)
    return [Image.fromarray((entry * 255.0).round().clip(0, 255).astype(np.uint8), mode="RGB") for entry in rgb]


# --------------------------------------------------------------------------------------------------------------------
# RewardEdit
# --------------------------------------------------------------------------------------------------------------------
StepHook = Callable[[int, int], None]


def edit_images(
    pipeline: Any,
    image: Any,
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

    Each image goes to the pipeline as the numpy array ``[1, H, W, C]`` of its values, so it is prepared, checked
    and sized by the library's rules exactly like that array (or the PIL image it was loaded from) in Python: any
    width and height, the output has the input's size. The settings are checked by the pipeline (its messages name
    its arguments: ``instruction`` is ``prompt``, ``steps`` is ``num_inference_steps``). Image ``i`` of the batch uses
    a CPU generator seeded with ``(seed + i) mod 2**64``, so a batch gives the same images as editing each one alone
    with those seeds.

    Args:
        pipeline: a loaded `RewardEditPipeline`.
        image (`torch.Tensor`): ComfyUI ``IMAGE``, ``[B, H, W, C]`` float in [0, 1].
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
    check_seed(seed)
    pixels = comfy_image_to_array(image, "image")
    batch, height, width = pixels.shape[:3]
    total_steps = batch * steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 0
    edited: list[torch.Tensor] = []
    for index in range(batch):
        done_before = index * steps

        def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any], _done: int = done_before):
            if on_step is not None:
                on_step(min(_done + step + 1, total_steps), total_steps)
            return callback_kwargs

        output = pipeline(
            prompt=instruction,
            image=pixels[index : index + 1],
            reward_scores=reward.scores,
            failure_text=reward.failure_text,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            reward_guidance_scale=reward_guidance_scale,
            generator=make_generator((seed + index) % (MAX_SEED + 1)),
            output_type="pt",
            callback_on_step_end=callback,
        )
        result = output.images.detach().float().cpu().permute(0, 2, 3, 1)  # [1, H, W, 3] in [0, 1]
        if tuple(result.shape[1:3]) != (height, width):
            raise RuntimeError(
                f"the pipeline returned a {result.shape[2]}x{result.shape[1]} image for a {width}x{height} input"
            )
        edited.append(result)
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


def judge_images(judge: Any, original: Any, edited: Any, instruction: str) -> JudgeOutputs:
    """Grade each (original, edited) pair with the project's judge.

    ``original`` may hold one image (compared with every edited image) or as many images as ``edited``. The three
    score outputs are the means over the pairs; ``feedback`` holds, per pair, the joined failure text (the model's
    conditioning format ``"following; preserving; quality"``, ``None`` where nothing failed), one line per pair.
    A failed judgment (bad reply, unreachable server) raises with the judge's reason.
    """
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("`instruction` must be the non-empty editing instruction the edited image was made from")
    originals = comfy_image_to_pil(original, "original")
    edits = comfy_image_to_pil(edited, "edited")
    n_original, n_edited = len(originals), len(edits)
    if n_original not in (1, n_edited):
        raise ValueError(f"`original` must hold 1 image or as many as `edited` ({n_edited}), got {n_original} images")
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
    """The loader's `dtype`: ``auto`` → float16 where ``fp16_supported`` (ComfyUI's verdict for the device; by
    default: CUDA), float32 otherwise; a name → `reward_edit_pipeline.devices.resolve_dtype`, the library's one rule
    (so ``fp16`` on the CPU is refused there as in Python and the CLI)."""
    import torch

    from reward_edit_pipeline.devices import resolve_dtype as resolve_library_dtype

    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"`dtype` must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype == "auto" and fp16_supported is not None:
        return torch.float16 if fp16_supported else torch.float32
    return resolve_library_dtype(dtype, device, name="dtype")


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
