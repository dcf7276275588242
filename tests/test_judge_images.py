"""Image handling for the judge: orientation, modes, resizing, data URLs, missing and corrupt files."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from reward_edit_pipeline.judge.images import (
    ImageLoadError,
    image_digest,
    load_image,
    prepare_image,
    resize_longest_side,
    vision_tokens,
)


def _decode(data_url: str) -> Image.Image:
    header, payload = data_url.split(",", 1)
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (8, 6))
    assert load_image(image).mode == "RGB"


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_longest_side_is_downscaled_but_never_upscaled():
    assert resize_longest_side(Image.new("RGB", (1024, 256)), 512).size == (512, 128)
    assert resize_longest_side(Image.new("RGB", (100, 50)), 512).size == (100, 50)


@pytest.mark.parametrize("image_format, mime", [("jpeg", "image/jpeg"), ("png", "image/png")])
def test_data_url_encodes_the_resized_image(image_format, mime):
    prepared = prepare_image(Image.new("RGB", (600, 300), (0, 128, 0)), max_side=300, image_format=image_format)
    assert prepared.data_url.startswith(f"data:{mime};base64,")
    assert _decode(prepared.data_url).size == (300, 150) == (prepared.width, prepared.height)


def test_missing_and_corrupt_files_raise_with_reason(tmp_path):
    with pytest.raises(ImageLoadError) as missing:
        load_image(tmp_path / "nope.jpg")
    assert missing.value.reason == "image_missing" and "nope.jpg" in str(missing.value)
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageLoadError) as broken:
        load_image(corrupt)
    assert broken.value.reason == "image_corrupt"
    with pytest.raises(ImageLoadError):
        load_image(b"not an image")


def test_digest_follows_content_not_name(tmp_path):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    assert image_digest(tmp_path / "a.png") == image_digest(tmp_path / "b.png")
    assert image_digest(Image.new("RGB", (4, 4), (1, 2, 3))) != image_digest(Image.new("RGB", (4, 4), (1, 2, 4)))


def test_vision_token_estimate_follows_tiling_rule():
    assert vision_tokens(512, 512, "low") == 85
    assert vision_tokens(512, 512, "high") == 85 + 170
    assert vision_tokens(1024, 1024, "high") == 85 + 170 * 4  # scaled to 768x768 -> 2x2 tiles
