"""`reward-edit push-model DIR REPO_ID`: upload a pipeline folder with a generated model card."""

from __future__ import annotations

import argparse
import sys

from ..cli import ExitCode
from .model_card import DEFAULT_BASE_MODEL, DEFAULT_DATASETS, DEFAULT_LICENSE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="A saved RewardEditPipeline folder (safetensors only).")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Target model repo, 'namespace/name' (created if missing).")
    parser.add_argument(
        "--private", action="store_true", help="Create the repo private (an existing repo is unchanged)."
    )
    parser.add_argument(
        "--revision", default=None, help="Branch to push to (created from main if missing). Default: main."
    )
    parser.add_argument("--commit-message", default=None, help="Commit message. Default: 'Upload RewardEditPipeline'.")
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
    parser.add_argument(
        "--dry-run",
        metavar="OUT_DIR",
        default=None,
        help="Write the exact folder that would be uploaded to OUT_DIR and stop (no token, no network).",
    )
    parser.add_argument("--overwrite", action="store_true", help="With --dry-run: replace a non-empty OUT_DIR.")


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from ._common import HubTokenError, PickleFileError, hub_error_exit_code
    from .push_model import push_model

    try:
        result = push_model(
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
        )
    except (HubTokenError, PickleFileError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"push-model: error: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except HfHubHTTPError as err:  # 2 when the Hub refused the request (4xx), 1 when it or the network failed
        print(f"push-model: error: {err}", file=sys.stderr)
        return hub_error_exit_code(err)
    if result.staged_folder is not None:
        print(f"dry run: the upload folder is {result.staged_folder}")
    elif result.created_commit:
        print(f"pushed {args.folder} to {result.repo_id}@{result.revision}: {result.commit_url}")
    else:
        print(f"{result.repo_id}@{result.revision} already has this content; no new commit ({result.commit_oid})")
    return ExitCode.OK
