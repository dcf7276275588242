"""`reward-edit edit IMAGE "instruction" -o OUT.png`: edit one image with reward conditions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..loading import DEFAULT_MODEL
from ..rewards import validate_score_triple


def parse_scores(text: str) -> tuple[float, float, float]:
    """`"5,5,5"` → (5.0, 5.0, 5.0); argparse type for `--scores`."""
    try:
        values = [float(part) for part in text.split(",")]
        return validate_score_triple(values, name="--scores")
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"{error} (expected three comma-separated numbers in [0, 5]: following,preserving,quality)"
        ) from error


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="image to edit (any format Pillow reads)")
    parser.add_argument("instruction", help='edit instruction, e.g. "make it a snowy day"')
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the edited image (PNG/JPEG)")
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
        "--failure-text", default=None, help="failure text to condition on (default: the model's 'no failure' text)"
    )
    parser.add_argument("--steps", type=positive_int, default=30, help="denoising steps (default 30, as in the paper)")
    parser.add_argument("--guidance", type=float, default=7.5, help="text guidance scale (default 7.5)")
    parser.add_argument("--image-guidance", type=float, default=1.5, help="image guidance scale (default 1.5)")
    parser.add_argument("--reward-guidance", type=float, default=1.0, help="reward guidance scale (default 1 = off)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42, as in the paper)")
    parser.add_argument(
        "--max-side",
        type=int,
        default=512,
        help="downscale so the longer side is at most this (default 512; 0 keeps the size)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="default: float16 on CUDA, float32 on CPU",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..images import load_rgb_image, shrink_to_max_side
    from ..loading import HubUnavailableError, load_pipeline
    from ..pipelines.reward_dit_common import run_edit

    if args.max_side < 0:
        print(f"error: --max-side must be >= 0, got {args.max_side}", file=sys.stderr)
        return 2
    try:
        image = load_rgb_image(args.image)
    except (OSError, ValueError) as error:
        print(f"error: cannot read IMAGE {str(args.image)!r}: {error}", file=sys.stderr)
        return 2
    image = shrink_to_max_side(image, args.max_side)
    try:
        pipe = load_pipeline(args.model, device=args.device, torch_dtype=args.dtype)
    except HubUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
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
            generator=generator,
        )
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    edited = result.images[0]
    edited.save(args.output)
    print(f"wrote {args.output} ({edited.width}x{edited.height})")
    return 0
