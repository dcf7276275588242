"""Small image helpers shared by the CLI, the benchmark and the nodes (no torch)."""

from __future__ import annotations

import os

from PIL import Image, ImageOps


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Open an image, apply its EXIF orientation and convert it to RGB. Raises `OSError` for unreadable files."""
    with Image.open(path) as opened:
        opened.load()
        return ImageOps.exif_transpose(opened).convert("RGB")


def shrink_to_max_side(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale (Lanczos) so that the longer side is at most `max_side`; `0` keeps the image. Never upscales."""
    if max_side < 0:
        raise ValueError(f"`max_side` must be >= 0, got {max_side}")
    longest = max(image.size)
    if max_side == 0 or longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
