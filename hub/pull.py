"""Download reward-edit models (ours or the official release) and the official reward dataset from the Hub."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..downloads import OFFICIAL_REPO_ID as OFFICIAL_MODEL_REPO
from ..downloads import OFFICIAL_STAGE2_FOLDER as OFFICIAL_STAGE2_SUBFOLDER

OFFICIAL_DATASET_REPO = "Gstar666/RewardEdit"
OFFICIAL_ANNOTATION_FILENAME = "RewardEdit_20K.json"

# Added to the library's pipeline patterns only with `allow_pickle=True` (trusted repos that ship no safetensors).
PICKLE_WEIGHT_PATTERNS: tuple[str, ...] = ("*/*.bin", "*/*.bin.index.json")

GATED_DATASET_HELP = (
    "{repo} is a gated dataset: open https://huggingface.co/datasets/{repo} while logged in, accept its access "
    "conditions, wait for the approval, then make your token available (HF_TOKEN or `hf auth login`) and retry."
)


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    allow_pickle: bool = False,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> Path:
    """Download the pipeline files of `repo_id` (optionally only `subfolder`) and return the local pipeline folder.

    `allow_patterns` defaults to the library's `PIPELINE_ALLOW_PATTERNS` (configs, safetensors weights, tokenizer
    files: what every loader of the package downloads); `allow_pickle=True` adds ``*.bin`` weights (only for trusted
    repos). `revision` is a branch, tag or commit hash.
    """
    from ..downloads import PIPELINE_ALLOW_PATTERNS, download_pipeline_files

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`repo_id` must look like 'namespace/name', got {repo_id!r}")
    patterns = list(allow_patterns) if allow_patterns is not None else list(PIPELINE_ALLOW_PATTERNS)
    if allow_pickle and allow_patterns is None:
        patterns += PICKLE_WEIGHT_PATTERNS
    subfolder = subfolder.strip("/") if subfolder else None
    folder = download_pipeline_files(
        repo_id,
        subfolder=subfolder,
        allow_patterns=patterns,
        name="repo_id",
        revision=revision,
        local_dir=local_dir,
        cache_dir=cache_dir,
        token=token,
    )
    if not (folder / "model_index.json").is_file():
        where = f"{repo_id}/{subfolder}" if subfolder else repo_id
        raise FileNotFoundError(
            f"{where} (revision {revision or 'main'}) has no model_index.json: it is not a diffusers pipeline "
            "(check `repo_id`, `subfolder` and `revision`)"
        )
    return folder


def pull_model(
    repo_id: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    device: Any = None,
    dtype: Any = None,
    torch_dtype: Any = None,
):
    """Download `repo_id` and load it as a `RewardEditPipeline` (ours, a stock InstructPix2Pix or an official folder).

    `device` and `dtype` (``torch_dtype`` is its older name, as in diffusers) are those of `load_pipeline`.
    """
    from reward_edit_pipeline import load_pipeline

    folder = download_model(
        repo_id,
        revision=revision,
        subfolder=subfolder,
        allow_patterns=allow_patterns,
        local_dir=local_dir,
        cache_dir=cache_dir,
        token=token,
    )
    return load_pipeline(str(folder), device=device, dtype=dtype, torch_dtype=torch_dtype)


def pull_official_model(
    repo_id: str = OFFICIAL_MODEL_REPO,
    *,
    subfolder: str = OFFICIAL_STAGE2_SUBFOLDER,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    save_to: str | Path | None = None,
):
    """Download the official stage-2 release and convert it with `RewardEditPipeline.from_official`.

    The release folder is a diffusers pipeline whose ``unet/`` is a plain `UNet2DConditionModel` config plus weights
    carrying the official extra reward keys. With `save_to`, the converted pipeline is also saved there.
    """
    from reward_edit_pipeline import RewardEditPipeline

    folder = download_model(
        repo_id,
        revision=revision,
        subfolder=subfolder,
        local_dir=local_dir,
        cache_dir=cache_dir,
        token=token,
    )
    pipe = RewardEditPipeline.from_official(str(folder))
    if save_to is not None:
        pipe.save_pretrained(str(save_to))
    return pipe


def download_official_annotations(
    repo_id: str = OFFICIAL_DATASET_REPO,
    *,
    filename: str = OFFICIAL_ANNOTATION_FILENAME,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> Path:
    """Download the official reward annotations JSON from the gated dataset repo (access must be granted first)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    try:
        return Path(
            hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision, cache_dir=cache_dir, token=token)
        )
    except GatedRepoError as err:
        raise PermissionError(GATED_DATASET_HELP.format(repo=repo_id)) from err


def pull_official_dataset(
    store_path: str | Path,
    *,
    images_dir: str | Path | None = None,
    repo_id: str = OFFICIAL_DATASET_REPO,
    filename: str = OFFICIAL_ANNOTATION_FILENAME,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> dict[str, int]:
    """Download the official annotations (gated: request access first) and import them into the store at
    `store_path` with the annotation engine's importer (`reward_edit_pipeline.data.official.import_official`).

    `images_dir` is the InstructPix2Pix clip-filtered folder the annotations refer to (instructions and images);
    without it only the scores and failure texts are imported. Returns the importer's report.
    """
    from reward_edit_pipeline.data.official import import_official

    json_path = download_official_annotations(
        repo_id, filename=filename, revision=revision, cache_dir=cache_dir, token=token
    )
    return import_official(json_path, store_path, images_dir=images_dir)
