"""Image handling for judges: load (path, bytes or PIL), fix orientation and mode, resize, encode as a data URL.

Missing and corrupt files raise `ImageLoadError` with a reason code (``image_missing``/``image_corrupt``) that the
judge records as a failed judgment.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from ..records import image_reference

ImageFormat = Literal["jpeg", "png"]
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png")
DETAIL_LEVELS: tuple[str, ...] = ("low", "high", "auto")


class ImageLoadError(ValueError):
    """An input image that cannot be used; ``reason`` is ``"image_missing"`` or ``"image_corrupt"``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_image_bytes(source: Any) -> bytes | None:
    """The encoded bytes of a path/bytes source (``None`` for an in-memory PIL image)."""
    if isinstance(source, Image.Image):
        return None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageLoadError("image_missing", f"image file not found: {path}") from None
        except IsADirectoryError:
            raise ImageLoadError("image_missing", f"image path is a directory: {path}") from None
        except OSError as error:
            raise ImageLoadError("image_missing", f"cannot read image file {path}: {error}") from None
    raise TypeError(f"an image must be a PIL image, a path or bytes, got {type(source).__name__}")


def image_digest(source: Any) -> str:
    """sha256 of an image's content: the file bytes for paths/bytes, mode+size+pixels for PIL images."""
    data = read_image_bytes(source)
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256(f"pil:{source.mode}:{source.size[0]}x{source.size[1]}:".encode())
    digest.update(source.tobytes())
    return digest.hexdigest()


def image_key(source: Any) -> str:
    """What a store's call key records for an image: its `image_digest`, or ``"<reason>:<path>"`` when it cannot be
    read now (the key then changes once the file appears, and the failure is recorded with its reason)."""
    try:
        return image_digest(source)
    except ImageLoadError as error:
        return f"{error.reason}:{image_reference(source)}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any mode to 8-bit RGB under the package's one image rule
    (`reward_edit_pipeline.images.to_rgb_image`: transparency on white, 16-bit scaled by 1/65535)."""
    from ..images import to_rgb_image

    try:
        return to_rgb_image(image)
    except ValueError as error:
        raise ImageLoadError("image_corrupt", str(error)) from None


def load_image(source: Any) -> Image.Image:
    """Load a PIL image / path / bytes as an RGB image with EXIF orientation applied."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    data = read_image_bytes(source)
    label = str(source) if isinstance(source, (str, os.PathLike)) else f"<{len(data or b'')} bytes>"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError("image_corrupt", f"cannot decode image {label}: {error}") from None


def resize_longest_side(image: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale so the longest side is at most ``max_side`` (aspect kept, Lanczos); never upscales."""
    if max_side is None:
        return image
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to send: its data URL and the size after resizing."""

    data_url: str
    width: int
    height: int


def encode_data_url(image: Image.Image, image_format: ImageFormat = "jpeg", jpeg_quality: int = 90) -> str:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality)
        mime = "image/jpeg"
    elif image_format == "png":
        image.save(buffer, format="PNG")
        mime = "image/png"
    else:
        raise ValueError(f"`image_format` must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def prepare_image(
    source: Any, max_side: int | None = 512, image_format: ImageFormat = "jpeg", jpeg_quality: int = 90
) -> PreparedImage:
    """Load, normalize (orientation, RGB), resize and encode one image."""
    image = resize_longest_side(load_image(source), max_side)
    return PreparedImage(encode_data_url(image, image_format, jpeg_quality), image.width, image.height)


def vision_tokens(width: int, height: int, detail: str) -> int:
    """Estimated input tokens of one image for GPT-4o-class models (OpenAI's published tiling rule)."""
    if detail == "low":
        return 85
    # fit in 2048x2048, then shortest side to at most 768, then count 512-pixel tiles
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    tiles = -(-int(width) // 512) * -(-int(height) // 512)
    return 85 + 170 * tiles
