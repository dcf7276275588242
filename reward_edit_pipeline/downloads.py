"""The one Hub download rule for pipelines (no torch): which files are fetched, what "unreachable" means, and the
loaders' pickle rule (`apply_pickle_rule`: weights are read from safetensors only unless `allow_pickle=True`).

`RewardEditPipeline.from_pretrained`, `load_pipeline`, `convert_official` and `reward_edit_pipeline.hub.pull` all
download through `download_pipeline_files` with `PIPELINE_ALLOW_PATTERNS` (configs, safetensors weights, tokenizer
files: no pickles, no code).
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
#: weight files that are Python pickles (loading one can run code): read only with `allow_pickle=True`
PICKLE_WEIGHT_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt")
#: keyword arguments of `huggingface_hub.snapshot_download` that loaders pass through
DOWNLOAD_KWARGS: tuple[str, ...] = ("revision", "token", "cache_dir", "local_files_only", "force_download", "local_dir")


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub could not be reached (offline, blocked, or no network) and nothing is cached."""


def converted_cache_dir() -> Path:
    """Where converted releases are kept (`$REWARD_EDIT_CACHE`, default `~/.cache/reward_edit_pipeline`)."""
    root = os.environ.get("REWARD_EDIT_CACHE") or os.path.join(Path.home(), ".cache", "reward_edit_pipeline")
    return Path(root) / "converted"


def write_folder_aside(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(folder)` on a fresh ``<target>.partial-*`` folder beside `target`, then rename it to `target`
    (replacing an older one). A crash or an interrupt never leaves a half-written `target`, a failed `write` leaves
    nothing behind, and two processes writing the same `target` at once do not share a folder: the last rename wins
    and the loser's complete copy is dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        write(partial)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(partial, target)
        except OSError:
            if not target.is_dir():
                raise
            # another writer renamed its complete folder into place between our rmtree and our rename: keep it
    finally:
        shutil.rmtree(partial, ignore_errors=True)
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


def pickled_weight_files(folder: str | os.PathLike) -> list[str]:
    """Component weight files of a pipeline folder that are pickles with no safetensors file beside them
    (``"unet/diffusion_pytorch_model.bin"``), sorted."""
    return sorted(
        f"{path.parent.name}/{path.name}"
        for path in Path(folder).glob("*/*")
        if path.suffix in PICKLE_WEIGHT_SUFFIXES and not any(path.parent.glob("*.safetensors"))
    )


def apply_pickle_rule(
    pretrained_model_name_or_path: str | os.PathLike, kwargs: dict[str, Any], loader: str, hint: str | None = None
) -> None:
    """The loaders' pickle rule, applied to `from_pretrained`-style `kwargs` in place.

    `allow_pickle` (popped; default False): without it the weights are read from safetensors only
    (``use_safetensors=True``; ``use_safetensors=False`` is refused) and a local folder with a component whose weights
    are only pickles is refused with a `FileNotFoundError` naming the files. ``allow_pickle=True`` (trusted folders
    only) leaves diffusers' own choice, which reads pickles with ``torch.load(weights_only=True)``.
    """
    allow_pickle = kwargs.pop("allow_pickle", False)
    if not isinstance(allow_pickle, bool):
        raise ValueError(f"`allow_pickle` must be True or False, got {allow_pickle!r}")
    if allow_pickle:
        return
    if kwargs.get("use_safetensors") is False:
        raise ValueError(
            f"{loader}: `use_safetensors=False` reads pickle weights, which can run code when loaded; pass "
            "`allow_pickle=True` instead, for a folder you trust"
        )
    kwargs["use_safetensors"] = True
    if os.path.isdir(pretrained_model_name_or_path):
        pickled = pickled_weight_files(pretrained_model_name_or_path)
        if pickled:
            raise FileNotFoundError(
                f"{os.fspath(pretrained_model_name_or_path)!r} holds weights only as pickle files "
                f"({', '.join(pickled)}), which can run code when loaded and are not read by default: "
                + (
                    hint
                    or f"for a folder you trust, load it once with `{loader}(..., allow_pickle=True)` and "
                    "`save_pretrained` it (safetensors)"
                )
            )


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
