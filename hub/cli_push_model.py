"""`reward-edit push-model DIR REPO_ID`: upload a pipeline folder with a generated model card."""

from __future__ import annotations

import argparse

from ._common import add_dry_run_arguments, add_push_target_arguments, run_push_command
from .model_card import DEFAULT_BASE_MODEL, DEFAULT_DATASETS, DEFAULT_LICENSE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="A saved RewardEditPipeline folder (safetensors only).")
    add_push_target_arguments(parser, "model", "Upload RewardEditPipeline")
    parser.add_argument(
        "--base-model", default=DEFAULT_BASE_MODEL, help=f"Card `base_model`. Default: {DEFAULT_BASE_MODEL}."
    )
    parser.add_argument(
        "--dataset",
        dest="datasets",
        action="append",
        default=None,
        help=f"Card `datasets` entry (repeatable). Default: {', '.join(DEFAULT_DATASETS)}.",
    )
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"Card `license`. Default: {DEFAULT_LICENSE}.")
    parser.add_argument("--tag", dest="tags", action="append", default=[], help="Extra card tag (repeatable).")
    parser.add_argument(
        "--training-args",
        default=None,
        help="JSON file of training arguments. Default: DIR/training_args.json if present.",
    )
    parser.add_argument(
        "--eval-results",
        default=None,
        help="JSON file of evaluation results. Default: DIR/eval_results.json if present.",
    )
    add_dry_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .push_model import push_model

    return run_push_command(
        "push-model",
        lambda: push_model(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            dry_run=args.dry_run is not None,
            dry_run_dir=args.dry_run,
            overwrite=args.overwrite,
            base_model=args.base_model or None,
            datasets=tuple(args.datasets) if args.datasets is not None else DEFAULT_DATASETS,
            license=args.license,
            tags=tuple(args.tags),
            training_args=args.training_args,
            eval_results=args.eval_results,
        ),
        source=args.folder,
    )
