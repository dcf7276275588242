"""`reward-edit edit IMAGE "instruction" -o OUT.png`: edit one image with reward conditions.

Exit status: 0 done, 2 bad input (arguments, image, output path, missing model folder, device), 1 runtime failure
(the Hub cannot be reached, the edit itself failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..devices import DTYPE_CHOICES, DTYPE_NAMES, MAX_SEED, check_seed
from ..downloads import OFFICIAL_REPO_ID as DEFAULT_MODEL  # light: `--help` imports no torch
from ..images import DEFAULT_MAX_IMAGE_PIXELS
from ..rewards import parse_score_text


def parse_scores(text: str) -> tuple[float, float, float]:
    """`"5,5,5"` → (5.0, 5.0, 5.0); argparse type for `--scores` (`reward_edit_pipeline.rewards.parse_score_text`)."""
    try:
        return parse_score_text(text, name="--scores")
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def seed_type(text: str) -> int:
    try:
        return check_seed(int(text), name="--seed")
    except ValueError as error:
        message = str(error) if text.strip().lstrip("-").isdigit() else f"must be an integer in [0, {MAX_SEED}]"
        raise argparse.ArgumentTypeError(message) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="image to edit (any format Pillow reads; 16-bit and alpha handled)")
    parser.add_argument("instruction", help='edit instruction, e.g. "make it a snowy day"')
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="where to write the edited image (.png, .jpg, .webp, ...)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"local pipeline folder or Hub repo id (default: the official weights {DEFAULT_MODEL}, "
        "converted on first use and cached)",
    )
    parser.add_argument(
        "--scores",
        type=parse_scores,
        default=(5.0, 5.0, 5.0),
        help="following,preserving,quality in [0, 5] (default 5,5,5)",
    )
    parser.add_argument(
        "--failure-text",
        default=None,
        help="failure text to condition on (default, or empty: the model's 'no failure' text)",
    )
    parser.add_argument("--steps", type=positive_int, default=30, help="denoising steps (default 30, as in the paper)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="text guidance scale (default: the model's own: 7.5 for InstructPix2Pix and SmartEdit, the pipeline's "
        "default for FLUX.1 Kontext and Qwen-Image-Edit; <= 1 turns InstructPix2Pix guidance off)",
    )
    parser.add_argument(
        "--image-guidance",
        type=float,
        default=None,
        help="image guidance scale (default 1.5; InstructPix2Pix and SmartEdit only, DiT editors have none)",
    )
    parser.add_argument("--reward-guidance", type=float, default=1.0, help="reward guidance scale (default 1 = off)")
    parser.add_argument(
        "--seed", type=seed_type, default=42, help=f"random seed in [0, {MAX_SEED}] (default 42, as in the paper)"
    )
    parser.add_argument(
        "--max-side",
        type=non_negative_int,
        default=512,
        help="downscale so the longer side is at most this, reported when it happens (default 512; 0 keeps the size)",
    )
    parser.add_argument(
        "--max-pixels",
        type=non_negative_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"refuse images with more pixels than this after --max-side (default {DEFAULT_MAX_IMAGE_PIXELS}; 0 = "
        "no limit)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=[*DTYPE_CHOICES, *(name for name in DTYPE_NAMES if name not in DTYPE_CHOICES)],
        metavar="{" + ",".join(DTYPE_CHOICES) + "}",
        help="default: float16 on CUDA, float32 on CPU (float16 on CPU is refused; bf16 works there)",
    )


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..devices import make_generator, resolve_device, resolve_dtype
    from ..images import check_image_pixels, check_output_path, load_image, shrink_to_max_side
    from ..loading import HubUnavailableError, load_pipeline
    from ..pipelines.reward_dit_common import run_edit

    # everything that can be checked is checked before the model is loaded and the edit runs
    try:
        check_output_path(args.output, inputs=(args.image,), name="--output")
        device = resolve_device(args.device, name="--device")
        dtype = resolve_dtype(args.dtype, device, name="--dtype")
    except ValueError as error:
        return _error(str(error))
    try:
        image = load_image(args.image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return _error(f"cannot read IMAGE {str(args.image)!r}: {error}")
    original_size = image.size
    try:
        image = shrink_to_max_side(image, args.max_side)
    except ValueError as error:
        return _error(f"IMAGE {str(args.image)!r}: {error}")
    size = (image.shape[1], image.shape[0]) if hasattr(image, "shape") else image.size
    if size != original_size:
        print(
            f"note: --max-side {args.max_side} shrank the image from {original_size[0]}x{original_size[1]} to "
            f"{size[0]}x{size[1]}; the edit is written at that size (--max-side 0 keeps the original size)",
            file=sys.stderr,
        )
    try:
        check_image_pixels(size[0], size[1], args.max_pixels or None, "IMAGE", override="--max-pixels N (0 = no limit)")
    except ValueError as error:
        return _error(str(error))
    try:
        pipe = load_pipeline(args.model, device=device, dtype=dtype)
    except FileNotFoundError as error:
        return _error(f"--model: {error}")
    except HubUnavailableError as error:
        return _error(f"--model: {error}", 1)
    pipe.max_image_pixels = args.max_pixels or None
    try:
        result = run_edit(  # one call for the SD and the DiT reward pipelines
            pipe,
            args.instruction,
            image,
            reward_scores=args.scores,
            failure_text=args.failure_text,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            image_guidance_scale=args.image_guidance,
            reward_guidance_scale=args.reward_guidance,
            generator=make_generator(args.seed),
        )
    except (ValueError, TypeError) as error:
        return _error(str(error))
    edited = result.images[0]
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        edited.save(args.output)
    except (OSError, ValueError) as error:
        return _error(f"cannot write --output {str(args.output)!r}: {error}", 1)
    print(f"wrote {args.output} ({edited.width}x{edited.height})")
    return 0
