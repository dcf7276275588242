"""The one preparation path for input images (numpy and Pillow only; the pipeline adds torch tensors on top).

Every front end (Python API, CLI, ComfyUI nodes, benchmark, trainer) turns its images into RGB values in [0, 1] with
these functions, so one photo gives one input everywhere. The rules (also in ``docs/rules.md``):

- **PIL images**, any mode: EXIF orientation applied; ``L``/``1``/``P``/``CMYK``/``YCbCr``/... converted to RGB by
  Pillow; transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) composited on a white background
  (`TRANSPARENT_BACKGROUND`); 16-bit ``I;16*`` scaled by 1/65535; ``I`` (how Pillow opens some 16-bit files) must lie in
  [0, 65535] and is scaled by 1/65535; ``F`` must lie in [0, 1].
- **numpy arrays** ``[H, W]``, ``[H, W, C]`` or ``[B, H, W, C]`` with ``C`` in 1 (grey), 2 (grey + alpha), 3 (RGB),
  4 (RGBA): ``uint8`` scaled by 1/255 (exactly like the same PIL image), ``uint16`` by 1/65535, floats must be finite
  and in [0, 1]. Other dtypes are refused.
- **size**: any width and height. The pipeline pads the image at the bottom/right (edge pixels repeated) up to a
  multiple of its size factor, edits, and crops the result back: **the output has the input's exact size**.
- **limit**: images with more than `DEFAULT_MAX_IMAGE_PIXELS` pixels are refused before any large allocation (raise it
  with ``pipe.max_image_pixels = N``, or ``None`` for no limit; CLI ``--max-pixels N``, ``0`` for no limit).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: RGB colour (0-255) that transparent pixels are composited on
TRANSPARENT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
#: default pixel limit (width x height) of one input image: 4096 x 4096
DEFAULT_MAX_IMAGE_PIXELS: int = 4096 * 4096

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def check_image_pixels(
    width: int,
    height: int,
    max_pixels: int | None,
    name: str = "image",
    override: str = "`pipe.max_image_pixels = N` (None = no limit)",
) -> None:
    """Refuse an image larger than `max_pixels` (width x height) with a message naming the limit and `override`."""
    if max_pixels is not None and width * height > max_pixels:
        side = int(max_pixels**0.5)
        raise ValueError(
            f"`{name}` is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,} "
            f"(about {side}x{side}); downscale it first, or raise the limit with {override} if your device has the "
            "memory"
        )


def _composite_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb`` [..., 3] and ``alpha`` [..., 1] in [0, 1] → RGB composited on `TRANSPARENT_BACKGROUND`."""
    background = np.asarray(TRANSPARENT_BACKGROUND, dtype=np.float32) / 255.0
    return rgb * alpha + background * (1.0 - alpha)


def pil_to_array(image: Image.Image, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """A PIL image of any mode → float32 ``[H, W, 3]`` RGB in [0, 1] (rules in the module docstring)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"`{name}` must be a PIL image, got {type(image).__name__}")
    check_image_pixels(image.width, image.height, max_pixels, name)
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.float32) / 255.0
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float32)
        if mode == "F":
            scale, high = 1.0, 1.0
        else:
            scale, high = 65535.0, 65535.0
        low_value, high_value = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low_value) and np.isfinite(high_value)) or low_value < 0 or high_value > high:
            raise ValueError(
                f"`{name}` is a mode-{mode} image with values in [{low_value:g}, {high_value:g}]; expected [0, {high:g}] "
                f"({'16-bit' if mode != 'F' else 'float'} grey). Convert it to an 8-bit RGB image first"
            )
        grey = values / scale
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return _composite_alpha(rgba[..., :3], rgba[..., 3:])
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def array_to_float(array: np.ndarray, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """A numpy image ``[H, W]``, ``[H, W, C]`` or ``[B, H, W, C]`` → float32 ``[B, H, W, 3]`` RGB in [0, 1]."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy array, got {type(array).__name__}")
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"`{name}` as a numpy array must be [H, W], [H, W, C] or [B, H, W, C] with C in 1, 2, 3, 4 "
            f"(grey, grey+alpha, RGB, RGBA), got shape {tuple(array.shape)}"
        )
    batch, height, width, channels = array.shape
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"`{name}` is empty: shape {tuple(array.shape)}")
    check_image_pixels(width, height, max_pixels, name)
    values = _scale_to_unit(array, name)
    if channels in (2, 4):
        colour, alpha = values[..., :-1], values[..., -1:]
        colour = np.repeat(colour, 3, axis=-1) if channels == 2 else colour
        return _composite_alpha(colour, alpha).astype(np.float32)
    return np.repeat(values, 3, axis=-1) if channels == 1 else values


def _scale_to_unit(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(
                f"`{name}` as a float array must hold finite values in [0, 1], got min {low:g} and max {high:g} "
                "(pass uint8 for 0-255 or uint16 for 0-65535 values)"
            )
        return values
    raise TypeError(
        f"`{name}` as a numpy array must be uint8 (0-255), uint16 (0-65535) or float in [0, 1], got dtype {array.dtype}"
    )


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (EXIF orientation applied, mode kept, so 16-bit and alpha reach `pil_to_array`).

    Raises `OSError`/`ValueError` for missing or unreadable files.
    """
    with Image.open(path) as opened:
        opened.load()
        return ImageOps.exif_transpose(opened)


def to_rgb_image(image: Image.Image) -> Image.Image:
    """Any PIL image → an 8-bit RGB PIL image under the same rules as `pil_to_array` (for 8-bit consumers: judge,
    trainer, benchmark)."""
    if image.mode == "RGB":
        return ImageOps.exif_transpose(image)
    array = pil_to_array(image)
    return Image.fromarray((array * 255.0).round().clip(0, 255).astype(np.uint8), mode="RGB")


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file, apply its EXIF orientation and convert it to 8-bit RGB (`to_rgb_image` rules)."""
    return to_rgb_image(load_image(path))


def shrink_to_max_side(image: Image.Image, max_side: int) -> Image.Image | np.ndarray:
    """Downscale (Lanczos) so that the longer side is at most `max_side`; `0` keeps the image. Never upscales.

    8-bit ``RGB``/``L`` images stay PIL images. Other modes (alpha, 16-bit, float, ...) are first brought to RGB in
    [0, 1] by `pil_to_array` and resized per channel in float, so no precision is lost; the result is then a float32
    ``[H, W, 3]`` array (Lanczos overshoot clipped to [0, 1]). The pipeline takes both.
    """
    if max_side < 0:
        raise ValueError(f"`max_side` must be >= 0, got {max_side}")
    longest = max(image.size)
    if max_side == 0 or longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.mode in ("RGB", "L"):
        return image.resize(size, Image.Resampling.LANCZOS)
    array = pil_to_array(image)
    channels = [np.asarray(Image.fromarray(array[..., c]).resize(size, Image.Resampling.LANCZOS)) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def image_output_extensions() -> set[str]:
    """File extensions (lower case, with the dot) that Pillow can write."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_output_path(
    output: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = (), name: str = "--output"
) -> Path:
    """Check an output image path BEFORE any work: a known image extension, not a folder, not one of `inputs`
    (the original is never overwritten), and a writable parent folder (created if missing). Returns the path."""
    output = Path(output)
    if output.is_dir():
        raise ValueError(
            f"`{name}` {str(output)!r} is a folder; give a file name such as {str(output / 'edited.png')!r}"
        )
    extension = output.suffix.lower()
    known = image_output_extensions()
    if extension not in known:
        examples = ", ".join(ext for ext in (".png", ".jpg", ".webp", ".tif") if ext in known)
        what = f"an unknown image extension {extension!r}" if extension else "no extension"
        raise ValueError(f"`{name}` {str(output)!r} has {what}; use an image extension such as {examples}")
    for source in inputs:
        same = output.resolve() == Path(source).resolve()
        if output.exists() and Path(source).exists():
            same = same or os.path.samefile(output, source)
        if same:
            raise ValueError(
                f"`{name}` {str(output)!r} is the input image; refusing to overwrite the original. Choose another path"
            )
    parent = output.parent if str(output.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"`{name}` {str(output)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise ValueError(f"`{name}` {str(output)!r} is not writable (no write permission in {str(existing)!r})")
    return output
