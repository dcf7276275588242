"""`reward-edit push-dataset SOURCE REPO_ID`: upload a reward dataset as parquet shards with a dataset card."""

from __future__ import annotations

import argparse
import re

from ._common import add_dry_run_arguments, add_push_target_arguments, run_push_command
from .push_dataset import DEFAULT_DATASET_LICENSE, DEFAULT_MAX_SHARD_BYTES

_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str) -> int:
    """``"500MB"`` -> 500_000_000; a positive size with an optional B/KB/MB/GB/KiB/MiB/GiB unit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 500MB or 1GiB, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SOURCE", help="An annotation store or an exported reward dataset (parquet / hf-dataset)."
    )
    add_push_target_arguments(parser, "dataset", "Upload reward dataset")
    parser.add_argument(
        "--license", default=DEFAULT_DATASET_LICENSE, help=f"Card license. Default: {DEFAULT_DATASET_LICENSE}."
    )
    parser.add_argument("--pretty-name", default=None, help="Card title. Default: the repo name.")
    parser.add_argument("--tag", dest="tags", action="append", default=[], help="Extra card tag (repeatable).")
    parser.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=DEFAULT_MAX_SHARD_BYTES,
        help="Close a parquet shard once its image bytes reach this size (e.g. 500MB). Default: 500MiB.",
    )
    parser.add_argument(
        "--triplets",
        default=None,
        help="Where images/instructions missing from SOURCE come from (e.g. the InstructPix2Pix clip-filtered folder "
        "for the official annotations): any folder, manifest or saved dataset `reward-edit train` reads.",
    )
    parser.add_argument(
        "--on-incomplete",
        choices=("skip", "error"),
        default="skip",
        help="Items not judged on all three perspectives: skip them with a warning (default) or fail.",
    )
    add_dry_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .push_dataset import push_dataset

    return run_push_command(
        "push-dataset",
        lambda: push_dataset(
            args.source,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            license=args.license,
            pretty_name=args.pretty_name,
            tags=tuple(args.tags),
            max_shard_bytes=args.max_shard_size,
            triplets=args.triplets,
            on_incomplete=args.on_incomplete,
            dry_run=args.dry_run is not None,
            dry_run_dir=args.dry_run,
            overwrite=args.overwrite,
        ),
        source=args.source,
        repo_label_prefix="datasets/",
    )
