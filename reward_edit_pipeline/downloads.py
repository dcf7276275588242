"""The one Hub download rule for pipelines (no torch): which files are fetched, and what "unreachable" means.

`RewardEditPipeline.from_pretrained`, `load_pipeline`, `convert_official` and `reward_edit_pipeline.hub.pull` all
download through `download_pipeline_files` with `PIPELINE_ALLOW_PATTERNS` (configs, safetensors weights, tokenizer
files: no pickles, no code).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: the official release of the paper's model: the Hub repo, and the folder of its stage-2 pipeline inside it
OFFICIAL_REPO_ID = "Gstar666/Reward-InsPix2Pix"
OFFICIAL_STAGE2_FOLDER = "stage2_reward_instruct_pix2pix"
#: what a pipeline needs from a Hub repo: configs, safetensors weights and tokenizer files (no pickles, no code)
PIPELINE_ALLOW_PATTERNS: tuple[str, ...] = (
    "model_index.json",
    "*/config.json",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
    "*/scheduler_config.json",
    "*/preprocessor_config.json",
    "tokenizer/*",
    "tokenizer_2/*",
)
#: keyword arguments of `huggingface_hub.snapshot_download` that loaders pass through
DOWNLOAD_KWARGS: tuple[str, ...] = ("revision", "token", "cache_dir", "local_files_only", "force_download", "local_dir")


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub could not be reached (offline, blocked, or no network) and nothing is cached."""


def converted_cache_dir() -> Path:
    """Where converted releases are kept (`$REWARD_EDIT_CACHE`, default `~/.cache/reward_edit_pipeline`)."""
    root = os.environ.get("REWARD_EDIT_CACHE") or os.path.join(Path.home(), ".cache", "reward_edit_pipeline")
    return Path(root) / "converted"


def write_folder_aside(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(folder)` on `<target>.partial`, then rename it to `target` (replacing an older one): a crash or an
    interrupt never leaves a half-written `target` behind."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _unreachable_error(repo_id: str, name: str, error: BaseException) -> HubUnavailableError:
    return HubUnavailableError(
        f"`{name}` {repo_id!r}: there is no local folder of that name, and the Hugging Face Hub cannot be reached "
        f"to download it as a repo id ({type(error).__name__}; it is not in the local cache either); give an "
        f"existing local pipeline folder as `{name}`, or connect and retry"
    )


def _offline_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)


def looks_like_repo_id(name: str | os.PathLike) -> bool:
    """``owner/name`` with no path markers (``./``, ``/``, ``~``, ``\\``, more than one ``/``)."""
    text = os.fspath(name)
    return (
        text.count("/") == 1
        and not text.startswith(("/", ".", "~"))
        and "\\" not in text
        and all(part.strip() for part in text.split("/"))
    )


def list_repo_files(repo_id: str, name: str = "repo_id", **download_kwargs: Any) -> list[str]:
    """The file paths of a Hub model repo (for choosing what to download; nothing is downloaded), listed as
    `snapshot_download` lists them (a dry run). A refused request (no such repo or revision, no access) raises the
    Hub client's `HfHubHTTPError`; no connection (or offline mode) raises `HubUnavailableError`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError, HfHubHTTPError

    if not looks_like_repo_id(repo_id):
        raise FileNotFoundError(
            f"`{name}` {os.fspath(repo_id)!r} is not an existing local folder and not a Hub repo id (owner/name)"
        )
    try:
        return sorted(info.filename for info in snapshot_download(repo_id, dry_run=True, **download_kwargs))
    except DryRunError as error:  # the dry run's wrapper around the listing's own error
        if isinstance(error.__cause__, HfHubHTTPError):
            raise error.__cause__ from None
        raise _unreachable_error(repo_id, name, error.__cause__ or error) from error
    except _offline_errors() as error:
        raise _unreachable_error(repo_id, name, error) from error


def download_pipeline_files(
    repo_id: str,
    subfolder: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    name: str = "pretrained_model_name_or_path",
    **download_kwargs: Any,
) -> Path:
    """Snapshot the pipeline files of a Hub repo (`PIPELINE_ALLOW_PATTERNS`, optionally only under `subfolder`) and
    return the local folder (the subfolder when given).

    Raises `FileNotFoundError` when `repo_id` is not a folder and not an ``owner/name`` id, and `HubUnavailableError`
    (naming both readings of the name) when the Hub cannot be reached and nothing is cached.
    """
    from huggingface_hub import snapshot_download

    if not looks_like_repo_id(repo_id):
        raise FileNotFoundError(
            f"`{name}` {os.fspath(repo_id)!r} is not an existing local folder and not a Hub repo id (owner/name)"
        )
    patterns = list(PIPELINE_ALLOW_PATTERNS if allow_patterns is None else allow_patterns)
    if subfolder:
        subfolder = subfolder.strip("/")
        patterns = [f"{subfolder}/{pattern}" for pattern in patterns]
    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=patterns, **download_kwargs))
    except _offline_errors() as error:
        raise _unreachable_error(repo_id, name, error) from error
    return snapshot / subfolder if subfolder else snapshot
