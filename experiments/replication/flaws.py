"""A flaw model for training ground truths, along the paper's three axes.

    following   "missing" (the edit is not done), "wrong" (a wrong colour / operation), "partial" (half of it)
    preserving  "collateral": something the instruction did not mention changes (another shape is recoloured, a shape
                appears in a free quadrant, or a patch of the background changes colour)
    quality     "noise" (Gaussian), "blur" (Gaussian), "blocking" (JPEG at a very low quality)

`FlawConfig.rate` is the fraction of triplets that get at least one flaw; a flawed triplet gets one axis, two or all
three with the probabilities `FlawConfig.axis_counts` (the experiment uses one axis only), drawn uniformly among the
axes that apply to it (preserving needs pixels the edit leaves alone: not so for "make it darker" or "make it
sepia"), each with a random kind and severity. Following flaws are applied first (they change what was edited), then
preserving, then quality (artifacts on the final image).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import (
    BACKGROUND_COLOURS,
    GLOBAL_OPERATIONS,
    OBJECT_COLOURS,
    QUADRANTS,
    SHAPES,
    STYLE_OPERATIONS,
    Edit,
    Sample,
    SceneObject,
    apply_edit,
    render,
    to_uint8,
)

FOLLOWING_FLAWS = ("missing", "wrong", "partial")
PRESERVING_FLAWS = ("collateral",)
QUALITY_FLAWS = ("noise", "blur", "blocking")
AXES = ("following", "preserving", "quality")
JPEG_BLOCK = 8


@dataclass(frozen=True)
class FlawConfig:
    """How often and how badly training ground truths are flawed."""

    rate: float = 0.4
    axis_counts: tuple[float, float, float] = (0.70, 0.25, 0.05)  # probability of 1, 2, 3 flawed axes
    noise_sigma: tuple[float, float] = (0.06, 0.12)
    blur_sigma: tuple[float, float] = (0.6, 1.0)
    jpeg_quality: tuple[int, int] = (15, 30)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"`rate` must be in [0, 1], got {self.rate}")
        if len(self.axis_counts) != 3 or abs(sum(self.axis_counts) - 1.0) > 1e-6 or min(self.axis_counts) < 0:
            raise ValueError(f"`axis_counts` must be 3 probabilities summing to 1, got {self.axis_counts}")


@dataclass(frozen=True)
class AppliedFlaws:
    """What was done to a ground truth: kind per axis ("" = clean on that axis)."""

    following: str = ""
    preserving: str = ""
    quality: str = ""

    @property
    def flawed(self) -> bool:
        return bool(self.following or self.preserving or self.quality)


# ----------------------------------------------------------------------------------------------- following
def _wrong_edit(sample: Sample, rng: np.random.Generator) -> Edit:
    edit = sample.edit
    if edit.edit_type in ("colour", "add"):
        choices = [c for c in OBJECT_COLOURS if c != edit.value]
        original_colour = next((o.colour for o in sample.scene.objects if o.shape == edit.target), None)
        choices = [c for c in choices if c != original_colour] or choices
        return replace(edit, value=str(rng.choice(choices)))
    if edit.edit_type == "background":
        choices = [c for c in BACKGROUND_COLOURS if c not in (edit.value, sample.scene.background)]
        return replace(edit, value=str(rng.choice(choices)))
    if edit.edit_type == "global":
        return replace(edit, target=next(op for op in GLOBAL_OPERATIONS if op != edit.target))
    if edit.edit_type == "style":
        return replace(edit, target=next(op for op in STYLE_OPERATIONS if op != edit.target))
    raise ValueError(f"no wrong variant of a {edit.edit_type!r} edit")


def following_flaw(sample: Sample, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The ground truth with a following flaw (float image in [0, 1])."""
    original = sample.result.original.astype(np.float64) / 255.0
    target = sample.result.target.astype(np.float64) / 255.0
    if kind == "missing":
        return original
    if kind == "wrong":
        wrong = apply_edit(sample.scene, _wrong_edit(sample, rng))
        return wrong.target.astype(np.float64) / 255.0
    if kind == "partial":
        # only the left (or top) half of the changed region is edited
        mask = sample.result.edit_mask
        rows, columns = np.nonzero(mask)
        by_columns = rng.random() < 0.5
        split = int(np.quantile(columns if by_columns else rows, 0.45))
        if split % JPEG_BLOCK == JPEG_BLOCK - 1:  # keep the split off JPEG's 8-pixel grid (a quality cue)
            split -= 1
        if by_columns:
            keep = np.arange(mask.shape[1])[None, :] <= split
        else:
            keep = np.arange(mask.shape[0])[:, None] <= split
        partial = original.copy()
        edited = mask & keep
        partial[edited] = target[edited]
        return partial
    raise ValueError(f"unknown following flaw {kind!r}; known: {FOLLOWING_FLAWS}")


def following_kinds(sample: Sample) -> tuple[str, ...]:
    if sample.edit.edit_type in ("remove", "texture", "global", "style"):
        return ("missing", "partial")
    return FOLLOWING_FLAWS


# ----------------------------------------------------------------------------------------------- preserving
def _protected_mask(sample: Sample) -> np.ndarray:
    """Pixels the edit must leave alone, with a 2-pixel margin around what it changes."""
    return ~ndimage.binary_dilation(sample.result.edit_mask, iterations=2)


def preserving_flaw(image: np.ndarray, sample: Sample, rng: np.random.Generator) -> np.ndarray | None:
    """Change something the instruction did not mention, inside the protected pixels (None if impossible)."""
    protected = _protected_mask(sample)
    size = sample.scene.size
    min_pixels = max(4, size * size // 50)
    if protected.sum() < 2 * min_pixels:
        return None
    options = []
    scene = sample.result.target_scene or sample.scene
    for scene_object in scene.objects:
        if scene_object.shape == sample.edit.target:
            continue
        _, masks = render(replace(scene, objects=(scene_object,)))
        mask = masks[scene_object.shape]
        if (mask & protected).sum() >= min_pixels:
            options.append(("recolour", scene_object, mask))
    used = {o.quadrant for o in scene.objects} | ({sample.edit.quadrant} if sample.edit.quadrant else set())
    present = {o.shape for o in scene.objects}
    for quadrant in QUADRANTS:
        if quadrant in used:
            continue
        for shape in SHAPES:
            if shape in present:
                continue
            new_object = SceneObject(shape, "red", quadrant, size=size * 5 // 16)
            _, masks = render(replace(scene, objects=(new_object,)))
            mask = masks[shape]
            if (mask & protected).sum() >= min_pixels:
                options.append(("add", new_object, mask))
    background = sample.result.element_masks["background"] & protected
    corner = np.zeros_like(background)
    patch = size // 4
    top, left = int(rng.integers(0, size - patch + 1)), int(rng.integers(0, size - patch + 1))
    corner[top : top + patch, left : left + patch] = True
    if (corner & background).sum() >= min_pixels:
        options.append(("patch", None, corner & background))
    if not options:
        return None
    kind, scene_object, mask = options[int(rng.integers(len(options)))]
    flawed = image.copy()
    current = flawed[mask].mean(axis=0)
    colours = [np.asarray(c) for c in list(OBJECT_COLOURS.values()) + list(BACKGROUND_COLOURS.values())]
    colours = [c for c in colours if np.abs(c - current).max() > 0.35]
    flawed[mask] = colours[int(rng.integers(len(colours)))]
    return flawed


# ----------------------------------------------------------------------------------------------- quality
def quality_flaw(image: np.ndarray, kind: str, config: FlawConfig, rng: np.random.Generator) -> np.ndarray:
    """Artifacts on a float image in [0, 1]."""
    if kind == "noise":
        sigma = rng.uniform(*config.noise_sigma)
        return np.clip(image + rng.normal(0.0, sigma, size=image.shape), 0.0, 1.0)
    if kind == "blur":
        sigma = rng.uniform(*config.blur_sigma)
        return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    if kind == "blocking":
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        buffer = io.BytesIO()
        Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality, subsampling=0)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float64) / 255.0
    raise ValueError(f"unknown quality flaw {kind!r}; known: {QUALITY_FLAWS}")


# ----------------------------------------------------------------------------------------------- all together
def apply_flaws(
    sample: Sample, axes: dict[str, str], config: FlawConfig, rng: np.random.Generator
) -> tuple[np.ndarray, AppliedFlaws]:
    """The ground truth with the given flaws ({axis: kind}); returns the uint8 image and what was applied."""
    image = sample.result.target.astype(np.float64) / 255.0
    applied = {}
    if axes.get("following"):
        image = following_flaw(sample, axes["following"], rng)
        applied["following"] = axes["following"]
    if axes.get("preserving"):
        flawed = preserving_flaw(image, sample, rng)
        if flawed is not None:
            image = flawed
            applied["preserving"] = axes["preserving"]
    if axes.get("quality"):
        image = quality_flaw(image, axes["quality"], config, rng)
        applied["quality"] = axes["quality"]
    return to_uint8(image), AppliedFlaws(**applied)


def draw_flaws(sample: Sample, config: FlawConfig, rng: np.random.Generator) -> dict[str, str]:
    """Which axes (and kinds) to flaw for one training triplet."""
    if rng.random() >= config.rate:
        return {}
    count = int(rng.choice([1, 2, 3], p=list(config.axis_counts)))
    # preserving needs something to preserve: not for global and style edits, which change every pixel
    size = sample.scene.size
    applicable = [
        a for a in AXES if a != "preserving" or _protected_mask(sample).sum() >= 2 * max(4, size * size // 50)
    ]
    axes = [str(axis) for axis in rng.choice(applicable, size=min(count, len(applicable)), replace=False)]
    chosen = {}
    for axis in axes:
        if axis == "following":
            chosen[axis] = str(rng.choice(following_kinds(sample)))
        elif axis == "preserving":
            chosen[axis] = "collateral"
        else:
            chosen[axis] = str(rng.choice(QUALITY_FLAWS))
    return chosen


def flawed_ground_truth(
    sample: Sample, config: FlawConfig, rng: np.random.Generator
) -> tuple[np.ndarray, AppliedFlaws]:
    return apply_flaws(sample, draw_flaws(sample, config, rng), config, rng)
