"""`reward-edit pull-model REPO_ID`: download a reward-edit model (or the official release) and check it loads."""

from __future__ import annotations

import argparse
import sys

from ..cli import ExitCode
from .pull import OFFICIAL_MODEL_REPO, OFFICIAL_STAGE2_SUBFOLDER


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "repo_id",
        metavar="REPO_ID",
        nargs="?",
        default=None,
        help=f"Model repo 'namespace/name'. With --official, defaults to {OFFICIAL_MODEL_REPO}.",
    )
    parser.add_argument("--revision", default=None, help="Branch, tag or commit hash. Default: main.")
    parser.add_argument("--subfolder", default=None, help="Pipeline folder inside the repo, if not at its root.")
    parser.add_argument(
        "--allow-pattern",
        dest="allow_patterns",
        action="append",
        default=None,
        help="Download only files matching this glob (repeatable). Default: the pipeline's configs and safetensors.",
    )
    parser.add_argument(
        "--official",
        action="store_true",
        help=f"Pull the official release ({OFFICIAL_MODEL_REPO}, folder {OFFICIAL_STAGE2_SUBFOLDER}) and convert it "
        "with RewardEditPipeline.from_official.",
    )
    parser.add_argument(
        "--local-dir", default=None, help="Download into this folder instead of the Hugging Face cache."
    )
    parser.add_argument(
        "--save-to", default=None, help="Save the loaded (for --official: converted) pipeline to this folder."
    )
    parser.add_argument("--no-load", action="store_true", help="Only download; do not load the pipeline.")


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from ..downloads import HubUnavailableError
    from ._common import hub_error_exit_code
    from .pull import download_model, pull_model, pull_official_model

    try:
        if args.official:
            if args.allow_patterns:
                raise ValueError("`--allow-pattern` cannot be combined with `--official`")
            pipe = pull_official_model(
                args.repo_id or OFFICIAL_MODEL_REPO,
                subfolder=args.subfolder or OFFICIAL_STAGE2_SUBFOLDER,
                revision=args.revision,
                local_dir=args.local_dir,
                save_to=args.save_to,
            )
            print(
                f"converted the official release to a {type(pipe).__name__}"
                + (f", saved to {args.save_to}" if args.save_to else "")
            )
            return ExitCode.OK
        if args.repo_id is None:
            raise ValueError("`REPO_ID` is required (or pass --official)")
        if args.no_load:
            folder = download_model(
                args.repo_id,
                revision=args.revision,
                subfolder=args.subfolder,
                allow_patterns=args.allow_patterns,
                local_dir=args.local_dir,
            )
            print(folder)
            return ExitCode.OK
        pipe = pull_model(
            args.repo_id,
            revision=args.revision,
            subfolder=args.subfolder,
            allow_patterns=args.allow_patterns,
            local_dir=args.local_dir,
        )
        if args.save_to:
            pipe.save_pretrained(args.save_to)
        print(
            f"loaded {args.repo_id} as a {type(pipe).__name__}" + (f", saved to {args.save_to}" if args.save_to else "")
        )
        return ExitCode.OK
    except (FileNotFoundError, ValueError, PermissionError) as err:
        print(f"pull-model: error: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except HfHubHTTPError as err:  # 2 when the Hub refused the request (4xx), 1 when it failed
        print(f"pull-model: error: {err}", file=sys.stderr)
        return hub_error_exit_code(err)
    except HubUnavailableError as err:  # the Hub cannot be reached and nothing is cached
        print(f"pull-model: error: {err}", file=sys.stderr)
        return ExitCode.FAILURE
