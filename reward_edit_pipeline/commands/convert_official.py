"""`reward-edit convert-official SRC -o OUT`: official release folder (or repo id) → RewardEditPipeline folder."""

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

    try:
        if os.path.isdir(args.source):
            load_local_pipeline(args.source).save_pretrained(args.output)
        else:
            convert_official(args.source, args.revision, output_dir=args.output)
    except HubUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0
