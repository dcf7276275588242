"""The exact judge of the editing world, behind the project's judge interface (`FunctionJudge`).

It knows every scene it may be asked about (a registry keyed by instruction + original pixels), so it compares the
edited image with the exact clean target:

    following   the fraction of the pixels the edit should change that match the target (3x3 box-smoothed, so pixel
                noise does not count; tolerance = half the edit's own contrast, between 0.12 and 0.2) -> score = 5 x
                fraction; verdict "yes" iff fraction >= 0.85.
    preserving  the fraction of the other pixels (2-pixel margin around the edit left out) that changed by >= 0.12
                (smoothed) -> score = 5 x (1 - min(1, fraction / 0.25)); "yes" iff score >= 4. An edit that changes
                every pixel (darker, sepia, ...) has nothing to preserve: 5.
    quality     artifacts measured where the target is flat or has a clean step, so colours and content do not count:
                noise  = mean absolute difference of neighbouring pixels that are equal in the target,
                blocking = the extra difference of such pairs across the 8-pixel JPEG grid,
                blur   = 1 - (step over one pixel / step over three pixels) at the target's edges;
                score = 5 x (1 - min(1, max(noise / 0.25, blocking / 0.06, blur / 0.9))); "yes" iff score >= 4.

Failure texts name what failed ("the circle is not red", "unrequested change to the square", "noise; blur"); empty
when nothing failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from reward_edit_pipeline.judge import FunctionJudge

from .world import Sample, image_key

FOLLOWING_YES_FRACTION = 0.85
PRESERVING_CHANGE_THRESHOLD = 0.2
PRESERVING_FULL_PENALTY_FRACTION = 0.25
NOISE_SCALE, BLOCKING_SCALE, BLUR_SCALE = 0.25, 0.06, 0.9
STRUCTURE_THRESHOLD = 0.3  # neighbour differences above this are edges of content, not artifacts
JPEG_GRID = 8
YES_SCORE = 4.0


@dataclass(frozen=True)
class Measurement:
    score: float
    verdict: str
    failure_text: str
    details: dict


def _float(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _smooth(image: np.ndarray) -> np.ndarray:
    return ndimage.uniform_filter(image, size=(3, 3, 1), mode="nearest")


def _following_phrase(sample: Sample) -> str:
    edit = sample.edit
    if edit.edit_type == "colour":
        return f"the {edit.target} is not {edit.value}"
    if edit.edit_type == "remove":
        return f"the {edit.target} is still there"
    if edit.edit_type == "add":
        return f"no {edit.value} {edit.target} in the {edit.quadrant}"
    if edit.edit_type == "texture":
        return f"the {edit.target} is not striped"
    if edit.edit_type == "background":
        return f"the background is not {edit.value}"
    return f"the image is not {edit.target}"


def measure_following(sample: Sample, edited: np.ndarray) -> Measurement:
    original, target, result = _float(sample.result.original), _float(sample.result.target), _float(edited)
    mask = sample.result.edit_mask
    smooth_target, smooth_result = _smooth(target), _smooth(result)
    contrast = np.abs(smooth_target - _smooth(original)).max(axis=-1)
    tolerance = np.clip(0.5 * contrast, 0.1, 0.2)
    error = np.abs(smooth_result - smooth_target).max(axis=-1)
    correct = (error < tolerance)[mask]
    fraction = float(correct.mean()) if correct.size else 1.0
    score = round(5.0 * fraction, 3)
    ok = fraction >= FOLLOWING_YES_FRACTION
    text = "" if ok else _following_phrase(sample) + (" in places" if fraction >= 0.5 else "")
    return Measurement(score, "yes" if ok else "no", text, {"fraction_correct": fraction})


def measure_preserving(sample: Sample, edited: np.ndarray) -> Measurement:
    original, result = _float(sample.result.original), _float(edited)
    protected = ~ndimage.binary_dilation(sample.result.edit_mask, iterations=2)
    if not protected.any():
        return Measurement(5.0, "yes", "", {"changed_fraction": 0.0, "protected_pixels": 0})
    changed = np.abs(_smooth(result) - _smooth(original)).max(axis=-1) >= PRESERVING_CHANGE_THRESHOLD
    changed &= protected
    fraction = float(changed.sum() / protected.sum())
    score = round(5.0 * (1.0 - min(1.0, fraction / PRESERVING_FULL_PENALTY_FRACTION)), 3)
    ok = score >= YES_SCORE
    text = ""
    if not ok:
        names = []
        min_pixels = max(2, changed.size // 128)
        for name, element in sample.result.element_masks.items():
            if (changed & element).sum() >= min_pixels:
                names.append("background" if name == "background" else name)
        text = "unrequested change to the " + (" and ".join(names) if names else "image")
    return Measurement(score, "yes" if ok else "no", text, {"changed_fraction": fraction})


def _pair_differences(image: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.diff(image, axis=axis)).max(axis=-1)


def quality_levels(target_u8: np.ndarray, edited: np.ndarray) -> dict[str, float]:
    """Noise, blocking and blur levels of `edited`, measured at the flat areas and clean steps of the target."""
    target, result = target_u8.astype(np.int16), _float(edited)
    flat_pairs, grid_lines, ratios = [], [], []
    for axis in (0, 1):
        equal = np.abs(np.diff(target, axis=axis)).max(axis=-1) == 0
        difference = _pair_differences(result, axis)
        artifact = equal & (difference < STRUCTURE_THRESHOLD)
        index = np.arange(difference.shape[axis])
        crossing = (index % JPEG_GRID) == JPEG_GRID - 1
        crossing_mask = np.broadcast_to(crossing[:, None] if axis == 0 else crossing[None, :], difference.shape)
        flat_pairs.append(difference[artifact & ~crossing_mask])
        # one mean per grid line; their median ignores a single content step that happens to lie on a grid line
        for line in np.nonzero(crossing)[0]:
            line_difference = np.take(difference, line, axis=axis)
            line_artifact = np.take(artifact, line, axis=axis)
            if line_artifact.sum() >= 4:
                grid_lines.append(float(line_difference[line_artifact].mean()))
        # clean steps: a -- a | b -- b along the axis, with a step of at least 0.2 in the target
        moved = np.moveaxis(target, axis, 0)
        values = np.moveaxis(result, axis, 0)
        left2, left1, right1, right2 = moved[:-3], moved[1:-2], moved[2:-1], moved[3:]
        step = np.abs(left1 - right1).max(axis=-1) / 255.0
        clean = (np.abs(left2 - left1).max(axis=-1) == 0) & (np.abs(right1 - right2).max(axis=-1) == 0) & (step >= 0.2)
        channel = np.abs(left1 - right1).argmax(axis=-1)[..., None]
        inner = np.abs(np.take_along_axis(values[1:-2] - values[2:-1], channel, axis=-1)[..., 0])
        outer = np.abs(np.take_along_axis(values[:-3] - values[3:], channel, axis=-1)[..., 0])
        usable = clean & (outer >= 0.1)
        ratios.append(np.clip(inner[usable] / outer[usable], 0.0, 1.0))
    flat = np.concatenate(flat_pairs)
    steps = np.concatenate(ratios)
    noise = float(flat.mean()) if flat.size else 0.0
    blocking = max(0.0, float(np.median(grid_lines)) - noise) if grid_lines else 0.0
    blur = 1.0 - float(steps.mean()) if steps.size else 0.0
    return {"noise": noise, "blocking": blocking, "blur": max(0.0, blur)}


def measure_quality(sample: Sample, edited: np.ndarray) -> Measurement:
    levels = quality_levels(sample.result.target, edited)
    penalties = {
        "noise": levels["noise"] / NOISE_SCALE,
        "blocking artifacts": levels["blocking"] / BLOCKING_SCALE,
        "blur": levels["blur"] / BLUR_SCALE,
    }
    score = round(5.0 * (1.0 - min(1.0, max(penalties.values()))), 3)
    ok = score >= YES_SCORE
    text = "; ".join(name for name, penalty in penalties.items() if penalty > 0.2) if not ok else ""
    return Measurement(score, "yes" if ok else "no", text, dict(levels))


MEASURES = {"following": measure_following, "preserving": measure_preserving, "quality": measure_quality}


class WorldRegistry:
    """The scenes the exact judge knows, keyed by (instruction, original pixels)."""

    def __init__(self, samples=()) -> None:
        self._samples: dict[str, Sample] = {}
        self.add(samples)

    def add(self, samples) -> None:
        for sample in samples:
            key = image_key(sample.edit.instruction, sample.result.original)
            known = self._samples.get(key)
            if known is not None and not np.array_equal(known.result.target, sample.result.target):
                raise ValueError(f"two samples share instruction and original but differ: {sample.sample_id}")
            self._samples[key] = sample

    def lookup(self, instruction: str, original: np.ndarray) -> Sample:
        key = image_key(instruction, original)
        if key not in self._samples:
            raise KeyError(f"unknown triplet (instruction {instruction!r}): not a scene of this world's registry")
        return self._samples[key]

    def __len__(self) -> int:
        return len(self._samples)


def judge_arrays(sample: Sample, edited: np.ndarray) -> dict[str, Measurement]:
    """All three perspectives of one edited image (uint8 [H, W, 3])."""
    if edited.shape != sample.result.target.shape:
        raise ValueError(f"edited image has shape {edited.shape}, expected {sample.result.target.shape}")
    return {perspective: measure(sample, edited) for perspective, measure in MEASURES.items()}


def make_exact_judge(registry: WorldRegistry, version: str = "1") -> FunctionJudge:
    """The exact judge as a `FunctionJudge`: usable with `annotate`/`AnnotationStore` like an LVLM judge."""

    def grade(perspective: str, instruction: str, original, edited):
        sample = registry.lookup(instruction, np.asarray(original))
        edited_array = np.asarray(edited)
        if edited_array.shape != sample.result.target.shape:
            raise ValueError(f"edited image has shape {edited_array.shape}, expected {sample.result.target.shape}")
        measurement = MEASURES[perspective](sample, edited_array)
        return measurement.score, measurement.verdict, measurement.failure_text

    return FunctionJudge(grade, name="edit-world-exact", version=version)
