"""Shared pieces of the Hub commands: token lookup, pickle refusal, staging folders, the upload itself, and the
common arguments and result report of the `push-*` commands."""

from __future__ import annotations

import fnmatch
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Files never uploaded from a model folder (training leftovers, caches, VCS).
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    ".git/*",
    ".cache/*",
    "*/.cache/*",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    "checkpoint-*",
    "checkpoint-*/*",
    "logs/*",
    ".DS_Store",
)
# Suffixes of formats that carry Python pickles (arbitrary code on load).
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy")
_TEXT_SUFFIXES = (".json", ".txt", ".md", ".yaml", ".yml", ".py", ".model", ".safetensors")

TOKEN_HELP = (
    "set the HF_TOKEN environment variable to a token with write access (https://huggingface.co/settings/tokens) "
    "or run `hf auth login` once"
)


class HubTokenError(RuntimeError):
    """No usable Hugging Face token (the message never contains a token)."""


class PickleFileError(ValueError):
    """A folder to upload contains pickle-based files."""


@dataclass(frozen=True)
class PushResult:
    """What a push did: the repo, the commit now at the head of `revision`, and whether a new commit was made."""

    repo_id: str
    repo_type: str
    revision: str
    commit_oid: str | None
    commit_url: str | None
    created_commit: bool
    staged_folder: Path | None = None  # the folder that was (or, with dry_run, would be) uploaded


def hub_error_exit_code(error: BaseException) -> int:
    """The CLI exit code of a failed Hub request: 2 when the request itself is wrong (4xx: a rejected token, no access,
    no such repo or revision), 1 when the Hub or the network failed (5xx, connection errors)."""
    from reward_edit_pipeline.cli import ExitCode

    status = getattr(getattr(error, "response", None), "status_code", None)
    return ExitCode.USAGE if isinstance(status, int) and 400 <= status < 500 else ExitCode.FAILURE


def resolve_token(token: str | None = None) -> str:
    """Return `token`, else ``HF_TOKEN``, else the huggingface_hub login; raise `HubTokenError` when none exists."""
    if token is not None:
        if not isinstance(token, str) or not token.strip():
            raise HubTokenError("`token` must be a non-empty string when given; " + TOKEN_HELP)
        return token.strip()
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubTokenError("No Hugging Face token found: " + TOKEN_HELP + ".")
    return found


def is_pickle_file(path: Path) -> bool:
    """True when `path` holds a pickle: a pickle suffix, a raw pickle header, or a torch zip archive with a ``.pkl``."""
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return True
    if name.endswith(_TEXT_SUFFIXES):
        return False
    with open(path, "rb") as handle:
        head = handle.read(4)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in (2, 3, 4, 5):  # PROTO opcode of pickle protocols 2-5
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(member.endswith(".pkl") for member in archive.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def matches_any(relative_path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(relative_path, pattern) for pattern in patterns)


def list_upload_files(folder: Path, ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS) -> list[str]:
    """Relative POSIX paths of the files under `folder` that would be uploaded, sorted."""
    ignore_patterns = tuple(ignore_patterns)
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            if not matches_any(relative, ignore_patterns):
                files.append(relative)
    return files


def refuse_pickle_files(folder: Path, relative_paths: Iterable[str]) -> None:
    """Raise `PickleFileError` listing every pickle-based file among `relative_paths`."""
    offenders = [rel for rel in relative_paths if is_pickle_file(folder / rel)]
    if offenders:
        raise PickleFileError(
            f"refusing to upload pickle-based files from {folder} (they can run arbitrary code when loaded): "
            f"{', '.join(offenders)}. Save the weights as safetensors (`save_pretrained(..., safe_serialization=True)`) "
            "and remove the pickle files, or move them out of the folder."
        )


def prepare_staging_folder(staging_dir: Path, overwrite: bool) -> Path:
    """Create an empty `staging_dir`; an existing non-empty one is replaced only with `overwrite`."""
    staging_dir = Path(staging_dir)
    if staging_dir.exists() and any(staging_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"dry-run output folder {staging_dir} already exists and is not empty; choose a new folder or pass "
                "overwrite=True (`--overwrite`)"
            )
        shutil.rmtree(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    return staging_dir


def copy_files(source: Path, relative_paths: Iterable[str], destination: Path) -> None:
    for rel in relative_paths:
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)


def upload_staged_folder(
    staged: Path,
    repo_id: str,
    *,
    repo_type: str,
    token: str,
    private: bool,
    revision: str | None,
    commit_message: str,
    delete_patterns: list[str] | None,
) -> PushResult:
    """Create the repo (and branch) if needed and upload `staged` in one commit; unchanged content makes no commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    branch = revision or "main"
    try:
        head_before = api.repo_info(repo_id, repo_type=repo_type, revision=branch).sha
    except RevisionNotFoundError:
        api.create_branch(repo_id, repo_type=repo_type, branch=branch, exist_ok=True)
        head_before = api.repo_info(repo_id, repo_type=repo_type, revision=branch).sha
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=staged,
        revision=branch,
        commit_message=commit_message,
        delete_patterns=delete_patterns,
    )
    return PushResult(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=branch,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        created_commit=commit.oid != head_before,
    )


# ---------------------------------------------------------------------------------------------- push commands
def add_push_target_arguments(parser: Any, repo_kind: str, default_commit_message: str) -> None:
    """`REPO_ID`, `--private`, `--revision` and `--commit-message` of the `push-*` commands (after their source)."""
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help=f"Target {repo_kind} repo, 'namespace/name' (created if missing)."
    )
    parser.add_argument(
        "--private", action="store_true", help="Create the repo private (an existing repo is unchanged)."
    )
    parser.add_argument(
        "--revision", default=None, help="Branch to push to (created from main if missing). Default: main."
    )
    parser.add_argument("--commit-message", default=None, help=f"Commit message. Default: '{default_commit_message}'.")


def add_dry_run_arguments(parser: Any) -> None:
    """`--dry-run OUT_DIR` and `--overwrite` of the `push-*` commands."""
    parser.add_argument(
        "--dry-run",
        metavar="OUT_DIR",
        default=None,
        help="Write the exact folder that would be uploaded to OUT_DIR and stop (no token, no network).",
    )
    parser.add_argument("--overwrite", action="store_true", help="With --dry-run: replace a non-empty OUT_DIR.")


def run_push_command(command: str, push: Callable[[], Any], source: str, repo_label_prefix: str = "") -> int:
    """Run `push()` for the CLI command `command` and report the result: a bad argument or token, a refused pickle
    or a missing/existing path exits 2 (usage); a Hub HTTP error exits as `hub_error_exit_code` says.
    `repo_label_prefix` is how the repo is named in messages before its id (`"datasets/"` for datasets)."""
    from huggingface_hub.errors import HfHubHTTPError

    from ..cli import ExitCode

    try:
        result = push()
    except (HubTokenError, PickleFileError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except HfHubHTTPError as err:  # 2 when the Hub refused the request (4xx), 1 when it or the network failed
        print(f"{command}: error: {err}", file=sys.stderr)
        return hub_error_exit_code(err)
    repo = f"{repo_label_prefix}{result.repo_id}@{result.revision}"
    if result.staged_folder is not None:
        print(f"dry run: the upload folder is {result.staged_folder}")
    elif result.created_commit:
        print(f"pushed {source} to {repo}: {result.commit_url}")
    else:
        print(f"{repo} already has this content; no new commit ({result.commit_oid})")
    return ExitCode.OK
