"""`reward-edit convert-smartedit SOURCE [-o OUT] --allow-pickle`: a SmartEdit release (Hub repo id or local copy) →
RewardSmartEditPipeline folder (`convert_smartedit.convert_smartedit_release`).

Exit status: 0 done, 2 bad input (a missing release file or wrong --steps, pickles without --allow-pickle, an OUT
that is a file, a repo the Hub refused), 1 the Hub cannot be reached or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_SOURCE = "TencentARC/SmartEdit-7B"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help=f"the release: a Hub repo id ({DEFAULT_SOURCE} or TencentARC/SmartEdit-13B) or a local copy of it",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="folder to write the pipeline to; default (Hub SOURCE only): the converted cache, which "
        "`reward-edit edit --model SOURCE` and load_pipeline(SOURCE) then use",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read the release's .bin files, which are pickles (they can run code: only for a source you trust; "
        "read with torch.load(weights_only=True))",
    )
    parser.add_argument("--steps", type=int, default=None, help="the training step in the file names (default 15000)")
    parser.add_argument("--revision", default=None, help="Hub revision of SOURCE (branch, tag or commit)")
    parser.add_argument(
        "--base-model",
        default=None,
        help="InstructPix2Pix repo or folder for the VAE, CLIP text encoder, scheduler and UNet config "
        "(default timbrooks/instruct-pix2pix)",
    )
    parser.add_argument(
        "--llm",
        default=None,
        help="repo or folder with the LLM's config and tokenizer (default: lmsys/vicuna-7b-v1.1 or -13b-v1.1, "
        "by the release's size)",
    )
    parser.add_argument(
        "--vision-encoder",
        default=None,
        help="CLIP vision repo or folder (default openai/clip-vit-large-patch14)",
    )
    parser.add_argument(
        "--bridge-config",
        type=Path,
        default=None,
        help="JSON file of SmartEditBridge config values the tensors do not show (head counts, llm_prompt_template)",
    )


def _bridge_overrides(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--bridge-config {str(path)!r} is not a readable JSON file: {error}") from error
    if not isinstance(overrides, dict):
        raise ValueError(f"--bridge-config {str(path)!r} must hold a JSON object, got {type(overrides).__name__}")
    return overrides


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from ..cli import ExitCode
    from ..convert_smartedit import (
        DEFAULT_BASE_MODEL,
        DEFAULT_VISION_MODEL,
        RELEASE_STEPS,
        convert_smartedit_release,
    )
    from ..downloads import HubUnavailableError
    from ..hub._common import hub_error_exit_code

    output: Path | None = args.output
    try:
        if output is not None and output.exists() and not output.is_dir():
            raise ValueError(f"--output {str(output)!r} is a file; give a folder to write the pipeline into")
        if output is not None and os.path.isdir(args.source) and output.resolve() == Path(args.source).resolve():
            raise ValueError("--output is SOURCE; write the converted pipeline to another folder")
        if output is None and os.path.isdir(args.source):
            raise ValueError(f"-o/--output is needed for the local folder {args.source!r}")
        if output is not None and output.is_dir() and any(output.iterdir()):
            print(
                f"warning: --output {str(output)!r} is not empty: the pipeline's files are written over files of the "
                "same name, other files stay",
                file=sys.stderr,
            )
        folder = convert_smartedit_release(
            args.source,
            steps=RELEASE_STEPS if args.steps is None else args.steps,
            revision=args.revision,
            base_model=args.base_model or DEFAULT_BASE_MODEL,
            llm_model=args.llm,
            vision_model=args.vision_encoder or DEFAULT_VISION_MODEL,
            allow_pickle=args.allow_pickle,
            output_dir=output,
            bridge_overrides=_bridge_overrides(args.bridge_config),
        )
    except (FileNotFoundError, ValueError) as error:
        message = str(error).replace("allow_pickle=True (CLI: --allow-pickle)", "--allow-pickle")
        print(f"convert-smartedit: error: {message}", file=sys.stderr)
        return ExitCode.USAGE
    except HfHubHTTPError as error:  # 2 when the Hub refused the request (4xx), 1 when it failed
        print(f"convert-smartedit: error: {error}", file=sys.stderr)
        return hub_error_exit_code(error)
    except HubUnavailableError as error:
        print(f"convert-smartedit: error: {error}", file=sys.stderr)
        return ExitCode.FAILURE
    print(f"wrote {folder}")
    return ExitCode.OK
