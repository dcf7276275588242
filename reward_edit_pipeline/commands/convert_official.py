"""`reward-edit convert-official SRC -o OUT`: official release folder (or repo id) → RewardEditPipeline folder.

Exit status: 0 done, 2 bad input (SOURCE missing or not a pipeline folder, OUT not a folder), 1 the Hub cannot be
reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="official stage-2 folder (stage2_reward_instruct_pix2pix), the release root, or a Hub repo id "
        "(e.g. Gstar666/Reward-InsPix2Pix)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the converted pipeline to")
    parser.add_argument("--revision", default=None, help="Hub revision when SOURCE is a repo id")


def run(args: argparse.Namespace) -> int:
    from ..loading import HubUnavailableError, convert_official, load_local_pipeline

    output: Path = args.output
    if output.exists() and not output.is_dir():
        print(f"error: --output {str(output)!r} is a file; give a folder to write the pipeline into", file=sys.stderr)
        return 2
    if os.path.exists(args.source) and output.resolve() == Path(args.source).resolve():
        print("error: --output is SOURCE; write the converted pipeline to another folder", file=sys.stderr)
        return 2
    if output.is_dir() and any(output.iterdir()):
        print(
            f"warning: --output {str(output)!r} is not empty: the pipeline's files are written over files of the same "
            "name, other files stay",
            file=sys.stderr,
        )
    try:
        if os.path.isdir(args.source):
            load_local_pipeline(args.source).save_pretrained(output)
        else:
            convert_official(args.source, args.revision, output_dir=output, name="SOURCE")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0
