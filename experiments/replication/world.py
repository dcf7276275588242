"""A procedural editing world: small flat-colour scenes, text instructions of seven types, exact clean edits.

A scene is a background colour and one to three shapes (square, circle, triangle), each in its own quadrant. An
instruction has one of the seven edit types of Real-Edit, in spirit:

    colour      "make the circle red"                 local colour change
    remove      "remove the square"
    add         "add a blue triangle in the top left"
    texture     "make the circle striped"             horizontal 2-pixel stripes in a darker shade
    background  "change the background to pink"
    global      "make it darker" / "make it brighter"
    style       "make it grayscale" / "make it sepia"

Everything is a deterministic function of a seed; images are `uint8` RGB arrays (`size` x `size`, default 16). The
clean edit of a scene is exact: `apply_edit` returns the target image and the masks of what the edit should change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.12, 0.65, 0.2),
    "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.15, 0.75),
    "orange": (0.98, 0.55, 0.05),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (0.96, 0.96, 0.96),
    "gray": (0.55, 0.55, 0.55),
    "pink": (0.98, 0.72, 0.78),
    "teal": (0.2, 0.58, 0.58),
    "beige": (0.9, 0.82, 0.62),
}
SHAPES = ("square", "circle", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
EDIT_TYPES = ("colour", "remove", "add", "texture", "background", "global", "style")
GLOBAL_OPERATIONS = ("darker", "brighter")
STYLE_OPERATIONS = ("grayscale", "sepia")
EDIT_MASK_THRESHOLD = 0.15  # a pixel belongs to the edit when the clean edit changes it by more than this
STRIPE_SHADE = 0.5  # the dark stripes of a striped shape are its colour times this


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    quadrant: str
    size: int  # side of the bounding box in pixels
    striped: bool = False


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]
    size: int = 16

    def find(self, shape: str) -> SceneObject:
        for scene_object in self.objects:
            if scene_object.shape == shape:
                return scene_object
        raise KeyError(f"no {shape} in the scene")


@dataclass(frozen=True)
class Edit:
    """One instruction: its type, text and parameters (`target` is a shape name or an operation, `value` a colour)."""

    edit_type: str
    instruction: str
    target: str = ""
    value: str = ""
    quadrant: str = ""


@dataclass
class EditResult:
    """The exact outcome of an edit: images, what should change (`edit_mask`) and the scene's element masks."""

    original: np.ndarray  # uint8 [H, W, 3]
    target: np.ndarray  # uint8 [H, W, 3]
    edit_mask: np.ndarray  # bool [H, W]: pixels the clean edit changes
    element_masks: dict[str, np.ndarray] = field(default_factory=dict)  # "background", "<shape>" -> bool [H, W]
    target_scene: Scene | None = None


# ----------------------------------------------------------------------------------------------- rendering
def _quadrant_origin(quadrant: str, size: int) -> tuple[int, int]:
    half = size // 2
    row = 0 if quadrant.startswith("top") else half
    column = 0 if quadrant.endswith("left") else half
    return row, column


def shape_mask(scene_object: SceneObject, size: int) -> np.ndarray:
    """Boolean mask of one shape, centred in its quadrant."""
    half = size // 2
    row0, column0 = _quadrant_origin(scene_object.quadrant, size)
    offset = (half - scene_object.size) // 2
    top, left, side = row0 + offset, column0 + offset, scene_object.size
    rows, columns = np.mgrid[0:size, 0:size]
    inside_box = (rows >= top) & (rows < top + side) & (columns >= left) & (columns < left + side)
    if scene_object.shape == "square":
        return inside_box
    if scene_object.shape == "circle":
        centre = (side - 1) / 2.0
        return ((rows - top - centre) ** 2 + (columns - left - centre) ** 2) <= (side / 2.0) ** 2 - 0.5
    if scene_object.shape == "triangle":
        # apex at the top centre, base along the bottom row
        height = rows - top
        half_width = (height + 1) * side / (2.0 * side)
        centre = left + (side - 1) / 2.0
        return inside_box & (np.abs(columns - centre) <= half_width)
    raise ValueError(f"unknown shape {scene_object.shape!r}; known: {SHAPES}")


def render(scene: Scene) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render a scene to a float image in [0, 1] and the masks of its elements (background and each shape)."""
    size = scene.size
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = BACKGROUND_COLOURS[scene.background]
    masks: dict[str, np.ndarray] = {}
    covered = np.zeros((size, size), dtype=bool)
    for scene_object in scene.objects:
        mask = shape_mask(scene_object, size)
        colour = np.asarray(OBJECT_COLOURS[scene_object.colour])
        image[mask] = colour
        if scene_object.striped:
            stripes = mask & ((np.arange(size)[:, None] // 2) % 2 == 1)
            image[stripes] = colour * STRIPE_SHADE
        masks[scene_object.shape] = mask
        covered |= mask
    masks["background"] = ~covered
    return image, masks


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def render_uint8(scene: Scene) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    image, masks = render(scene)
    return to_uint8(image), masks


# ----------------------------------------------------------------------------------------------- global operations
def global_operation(image: np.ndarray, operation: str) -> np.ndarray:
    """A pixel-wise operation on a float image in [0, 1] (global and style edits)."""
    if operation == "darker":
        return image * 0.5
    if operation == "brighter":
        return image + (1.0 - image) * 0.55
    if operation == "grayscale":
        luminance = image @ np.array([0.299, 0.587, 0.114])
        return np.repeat(luminance[..., None], 3, axis=-1)
    if operation == "sepia":
        matrix = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
        return np.clip(image @ matrix.T, 0.0, 1.0)
    raise ValueError(f"unknown operation {operation!r}; known: {GLOBAL_OPERATIONS + STYLE_OPERATIONS}")


# ----------------------------------------------------------------------------------------------- sampling
def sample_scene(rng: np.random.Generator, size: int = 16) -> Scene:
    """A random scene: a background and 1-3 shapes of distinct kinds in distinct quadrants."""
    count = int(rng.integers(1, 4))
    shapes = rng.choice(SHAPES, size=count, replace=False)
    quadrants = rng.choice(QUADRANTS, size=count, replace=False)
    objects = []
    for shape, quadrant in zip(shapes, quadrants):
        objects.append(
            SceneObject(
                shape=str(shape),
                colour=str(rng.choice(list(OBJECT_COLOURS))),
                quadrant=str(quadrant),
                size=int(rng.integers(size * 5 // 16, size * 7 // 16 + 1)),
                striped=bool(rng.random() < 0.15),
            )
        )
    return Scene(background=str(rng.choice(list(BACKGROUND_COLOURS))), objects=tuple(objects), size=size)


def possible_edits(scene: Scene) -> list[Edit]:
    """Every instruction that applies to `scene` (each changes the image)."""
    edits: list[Edit] = []
    present = {o.shape for o in scene.objects}
    used_quadrants = {o.quadrant for o in scene.objects}
    for scene_object in scene.objects:
        for colour in OBJECT_COLOURS:
            if colour != scene_object.colour:
                edits.append(Edit("colour", f"make the {scene_object.shape} {colour}", scene_object.shape, colour))
        edits.append(Edit("remove", f"remove the {scene_object.shape}", scene_object.shape))
        if not scene_object.striped:
            edits.append(Edit("texture", f"make the {scene_object.shape} striped", scene_object.shape))
    for shape in SHAPES:
        if shape in present:
            continue
        for quadrant in QUADRANTS:
            if quadrant in used_quadrants:
                continue
            for colour in OBJECT_COLOURS:
                edits.append(Edit("add", f"add a {colour} {shape} in the {quadrant}", shape, colour, quadrant))
    for background in BACKGROUND_COLOURS:
        if background != scene.background:
            edits.append(Edit("background", f"change the background to {background}", "background", background))
    for operation in GLOBAL_OPERATIONS:
        edits.append(Edit("global", f"make it {operation}", operation))
    for operation in STYLE_OPERATIONS:
        edits.append(Edit("style", f"make it {operation}", operation))
    return edits


def sample_edit(scene: Scene, rng: np.random.Generator, edit_type: str | None = None) -> Edit:
    """A random applicable edit; the type is drawn uniformly among the applicable types (or fixed)."""
    edits = possible_edits(scene)
    types = sorted({edit.edit_type for edit in edits}, key=EDIT_TYPES.index)
    if edit_type is None:
        edit_type = str(rng.choice(types))
    elif edit_type not in types:
        raise ValueError(f"edit_type {edit_type!r} does not apply to this scene; applicable: {types}")
    candidates = [edit for edit in edits if edit.edit_type == edit_type]
    return candidates[int(rng.integers(len(candidates)))]


# ----------------------------------------------------------------------------------------------- applying edits
def edited_scene(scene: Scene, edit: Edit) -> Scene | None:
    """The scene after an object-level edit (None for pixel-wise global and style edits)."""
    if edit.edit_type == "colour":
        objects = tuple(replace(o, colour=edit.value) if o.shape == edit.target else o for o in scene.objects)
        return replace(scene, objects=objects)
    if edit.edit_type == "remove":
        return replace(scene, objects=tuple(o for o in scene.objects if o.shape != edit.target))
    if edit.edit_type == "texture":
        objects = tuple(replace(o, striped=True) if o.shape == edit.target else o for o in scene.objects)
        return replace(scene, objects=objects)
    if edit.edit_type == "add":
        new_object = SceneObject(edit.target, edit.value, edit.quadrant, size=scene.size * 6 // 16)
        return replace(scene, objects=scene.objects + (new_object,))
    if edit.edit_type == "background":
        return replace(scene, background=edit.value)
    return None


def apply_edit(scene: Scene, edit: Edit) -> EditResult:
    """The exact clean edit: target image and the mask of pixels it changes."""
    original, masks = render(scene)
    new_scene = edited_scene(scene, edit)
    if new_scene is None:
        target = global_operation(original, edit.target)
        target_masks = masks
    else:
        target, target_masks = render(new_scene)
    original_u8, target_u8 = to_uint8(original), to_uint8(target)
    changed = np.abs(original_u8.astype(np.int16) - target_u8.astype(np.int16)).max(axis=-1) > EDIT_MASK_THRESHOLD * 255
    element_masks = dict(masks)
    for name, mask in target_masks.items():
        if name != "background":
            element_masks[name] = element_masks.get(name, np.zeros_like(mask)) | mask
    return EditResult(original_u8, target_u8, changed, element_masks, new_scene)


def image_key(instruction: str, image: np.ndarray) -> str:
    """A content key of (instruction, original pixels): how the exact judge finds the scene of a triplet."""
    digest = hashlib.sha256()
    digest.update(instruction.encode("utf-8"))
    digest.update(b"\0")
    digest.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Sample:
    """One world sample: a scene, an edit and its exact outcome."""

    sample_id: str
    scene: Scene
    edit: Edit
    result: EditResult


def generate_samples(
    count: int, seed: int, size: int = 16, prefix: str = "s", edit_types: tuple[str, ...] = EDIT_TYPES
) -> list[Sample]:
    """`count` samples from `seed`; the edit types (default: all seven) cycle, so each is equally represented."""
    unknown = sorted(set(edit_types) - set(EDIT_TYPES))
    if unknown or not edit_types:
        raise ValueError(f"`edit_types` must be a non-empty subset of {EDIT_TYPES}, got {edit_types}")
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    number = 0
    while len(samples) < count:
        scene = sample_scene(rng, size)
        edit_type = edit_types[len(samples) % len(edit_types)]
        try:
            edit = sample_edit(scene, rng, edit_type)
        except ValueError:  # e.g. "add" into a scene with no free quadrant: draw another scene
            number += 1
            continue
        result = apply_edit(scene, edit)
        samples.append(Sample(f"{prefix}{len(samples):06d}", scene, edit, result))
        number += 1
    return samples
