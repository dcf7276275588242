"""Publish a reward-edit pipeline folder to the Hub: safetensors weights, a generated model card, a loader shim."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import (
    DEFAULT_IGNORE_PATTERNS,
    PushResult,
    copy_files,
    list_upload_files,
    prepare_staging_folder,
    refuse_pickle_files,
    resolve_token,
    upload_staged_folder,
)
from .model_card import (
    DEFAULT_BASE_MODEL,
    DEFAULT_DATASETS,
    DEFAULT_LICENSE,
    EVAL_RESULTS_FILENAMES,
    TRAIN_SUMMARY_FILENAME,
    TRAIN_SUMMARY_KEYS,
    TRAINING_ARGS_FILENAMES,
    build_model_card,
    find_first,
    read_json_file,
)


def _loader_names() -> tuple[str, str]:
    """``(loader module stem, library name)`` pinned by the pipeline module.

    `RewardEditPipeline.save_pretrained` writes the loader shims that `DiffusionPipeline.from_pretrained(repo,
    trust_remote_code=True)` needs: the top-level ``pipeline_reward_edit.py`` and ``<component>/reward_edit_pipeline.py``
    for each component whose class comes from this package; here we only check they are present. Imported when a
    folder is staged, so that importing this module (and ``reward-edit push-model --help``) does not load torch.
    """
    from ..pipelines.pipeline_reward_edit import LOADER_MODULE_STEM, PUBLIC_LIBRARY

    return LOADER_MODULE_STEM, PUBLIC_LIBRARY


def _read_model_index(folder: Path) -> dict[str, Any]:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"`folder` {folder} is not a diffusers pipeline folder: model_index.json is missing "
            "(save one with `RewardEditPipeline.save_pretrained`)"
        )
    return json.loads(index_path.read_text(encoding="utf-8"))


def package_components(model_index: Mapping[str, Any]) -> dict[str, str]:
    """``{component: class name}`` of the components whose class comes from this package (e.g. the UNet)."""
    _, library = _loader_names()
    return {
        name: value[1]
        for name, value in model_index.items()
        if isinstance(value, list) and len(value) == 2 and value[0] == library and isinstance(value[1], str)
    }


def _check_reward_pipeline(folder: Path, model_index: Mapping[str, Any]) -> None:
    loader_module_stem, _ = _loader_names()
    class_name = model_index.get("_class_name")
    if isinstance(class_name, (list, tuple)):
        class_name = class_name[-1]
    if class_name != "RewardEditPipeline" or (
        isinstance(model_index.get("_class_name"), (list, tuple))
        and model_index["_class_name"][0] != loader_module_stem
    ):
        raise ValueError(
            f"`folder` {folder} holds a {class_name!r} pipeline, not a RewardEditPipeline; convert it first "
            "(`reward-edit convert-official` or `RewardEditPipeline.from_instruct_pix2pix(...).save_pretrained(...)`)"
        )
    unet_entry = model_index.get("unet")
    if not unet_entry or not (folder / "unet").is_dir():
        raise ValueError(f"`folder` {folder} has no `unet` component")


def _no_failure_text(folder: Path) -> str:
    config_path = folder / "unet" / "config.json"
    if config_path.is_file():
        value = json.loads(config_path.read_text(encoding="utf-8")).get("no_failure_text")
        if isinstance(value, str):
            return value
    from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT

    return DEFAULT_NO_FAILURE_TEXT


def _resolve_training_args(
    folder: Path, training_args: str | Path | Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The training arguments for the card: the given mapping or JSON file; else the folder's ``training_args.json``
    (or another name of `TRAINING_ARGS_FILENAMES`); else the path-free entries of its ``train_summary.json``; else
    `None` (a folder with neither file gets a card without a training section)."""
    if isinstance(training_args, Mapping):
        return training_args
    if training_args is not None:
        if not isinstance(training_args, (str, Path)):
            raise TypeError(
                f"`training_args` must be a mapping or the path of a JSON file, got {type(training_args).__name__}"
            )
        return read_json_file(Path(training_args), "training_args")
    found = find_first(folder, TRAINING_ARGS_FILENAMES)
    if found is not None:
        return read_json_file(found, "training_args")
    if (folder / TRAIN_SUMMARY_FILENAME).is_file():
        summary = read_json_file(folder / TRAIN_SUMMARY_FILENAME, "train summary")
        return {key: summary[key] for key in TRAIN_SUMMARY_KEYS if summary.get(key) is not None} or None
    return None


def stage_model_folder(
    folder: str | Path,
    repo_id: str,
    staging_dir: str | Path,
    *,
    revision: str | None = None,
    base_model: str | None = DEFAULT_BASE_MODEL,
    datasets: Sequence[str] = DEFAULT_DATASETS,
    license: str = DEFAULT_LICENSE,  # noqa: A002
    tags: Sequence[str] = (),
    training_args: str | Path | Mapping[str, Any] | None = None,
    eval_results: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
    overwrite: bool = False,
) -> Path:
    """Write into `staging_dir` exactly what `push_model` uploads: the folder's files, a generated ``README.md`` and
    the loader shims written by `RewardEditPipeline.save_pretrained`.

    Refuses pickle-based files. `training_args` / `eval_results` are mappings or JSON files; when not given, the
    folder's own ``training_args.json`` (else the path-free entries of ``train_summary.json``) / ``eval_results.json``
    are used when present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`folder` {folder} does not exist or is not a directory")
    from .dit_card import dit_folder_kind, stage_dit_folder  # DiT editors (FLUX.1 Kontext): see docs/dit.md

    if dit_folder_kind(folder) is not None:
        return stage_dit_folder(
            folder,
            repo_id,
            staging_dir,
            base_model=base_model,
            datasets=datasets,
            license=license,
            tags=tags,
            training_args=_resolve_training_args(folder, training_args),
            eval_results=eval_results,
            ignore_patterns=ignore_patterns,
            overwrite=overwrite,
        )
    _check_reward_pipeline(folder, _read_model_index(folder))
    loader_module_stem, library = _loader_names()
    shim_filename = f"{loader_module_stem}.py"
    files = list_upload_files(folder, ignore_patterns)
    files = [rel for rel in files if rel != "README.md"]
    refuse_pickle_files(folder, files)
    if shim_filename not in files:
        raise FileNotFoundError(
            f"`folder` {folder} lacks the loader module {shim_filename} that `RewardEditPipeline.save_pretrained` "
            "writes (needed by `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`); re-save the pipeline"
        )
    missing_shims = [
        f"{component}/{library}.py"
        for component in package_components(_read_model_index(folder))
        if f"{component}/{library}.py" not in files
    ]
    if missing_shims:
        raise FileNotFoundError(
            f"`folder` {folder} lacks the component loader modules {missing_shims} that "
            "`RewardEditPipeline.save_pretrained` writes; re-save the pipeline"
        )
    if not any(rel.endswith(".safetensors") for rel in files):
        raise ValueError(f"`folder` {folder} contains no .safetensors weights")

    training_args = _resolve_training_args(folder, training_args)
    if eval_results is None:
        found = find_first(folder, EVAL_RESULTS_FILENAMES)
        eval_results = read_json_file(found, "eval_results") if found else None
    elif isinstance(eval_results, (str, Path)):
        eval_results = read_json_file(Path(eval_results), "eval_results")

    card = build_model_card(
        repo_id,
        base_model=base_model,
        datasets=datasets,
        license=license,
        tags=tags,
        training_args=training_args,
        eval_results=eval_results,
        no_failure_text=_no_failure_text(folder),
        revision=revision,
        shim_filename=shim_filename,
    )
    staged = prepare_staging_folder(Path(staging_dir), overwrite=overwrite)
    copy_files(folder, files, staged)
    (staged / "README.md").write_text(str(card), encoding="utf-8")
    return staged


def push_model(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    dry_run_dir: str | Path | None = None,
    overwrite: bool = False,
    **card_kwargs: Any,
) -> PushResult:
    """Upload the pipeline `folder` to the model repo `repo_id` (created if missing) in a single commit.

    Args:
        folder (`str` or `Path`): a saved `RewardEditPipeline` folder (safetensors only; pickle files are refused).
        repo_id (`str`): ``"namespace/name"``.
        private (`bool`, *optional*, defaults to `False`): create the repo private (an existing repo keeps its setting).
        revision (`str`, *optional*): branch to push to (created from ``main`` when missing); defaults to ``main``.
        commit_message (`str`, *optional*): defaults to ``"Upload RewardEditPipeline"``.
        token (`str`, *optional*): defaults to ``HF_TOKEN`` or the huggingface_hub login. Never printed.
        dry_run (`bool`, *optional*): only write the folder that would be uploaded to `dry_run_dir`; no network.
        card_kwargs: `base_model`, `datasets`, `license`, `tags`, `training_args`, `eval_results`, `ignore_patterns`.

    Re-pushing unchanged content makes no commit (`PushResult.created_commit` is `False`).
    """
    if dry_run:
        if dry_run_dir is None:
            raise ValueError("`dry_run_dir` is required with `dry_run=True` (the folder that would be uploaded)")
        staged = stage_model_folder(folder, repo_id, dry_run_dir, revision=revision, overwrite=overwrite, **card_kwargs)
        return PushResult(repo_id, "model", revision or "main", None, None, False, staged_folder=staged)
    resolved_token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="reward-edit-push-") as tmp:
        staged = stage_model_folder(folder, repo_id, Path(tmp) / "upload", revision=revision, **card_kwargs)
        top_level_folders = sorted({rel.split("/")[0] for rel in list_upload_files(staged, ()) if "/" in rel})
        return upload_staged_folder(
            staged,
            repo_id,
            repo_type="model",
            token=resolved_token,
            private=private,
            revision=revision,
            commit_message=commit_message or "Upload RewardEditPipeline",
            # replace stale files inside the pipeline's component folders; other files in the repo are kept
            delete_patterns=[f"{name}/*" for name in top_level_folders],
        )
