"""One loader for every model source: a saved `RewardEditPipeline`, a plain InstructPix2Pix checkpoint, the official
release layout, or a Hub repo id of any of these. The CLI, the ComfyUI nodes and the benchmark all call
`load_pipeline`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .convert_smartedit import SMARTEDIT_RELEASES
from .devices import resolve_device, resolve_dtype
from .downloads import (
    OFFICIAL_REPO_ID,
    OFFICIAL_STAGE2_FOLDER,
    HubUnavailableError,
    converted_cache_dir,
    download_pipeline_files,
    looks_like_repo_id,
    write_folder_aside,
)
from .pipelines.pipeline_reward_edit import DTYPE_KWARG, RewardEditPipeline

logger = logging.getLogger(__name__)

DEFAULT_MODEL = OFFICIAL_REPO_ID
#: key prefixes that only the official release's UNet carries (its reward modules)
OFFICIAL_REWARD_KEY_PREFIXES: tuple[str, ...] = ("text_linear.", "proj_deal.")
#: DiT editors (docs/dit.md): saved reward pipeline class → defining module; stock pipeline class → reward class
DIT_REWARD_PIPELINES: dict[str, str] = {
    "RewardFluxKontextPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext",
    "RewardQwenImageEditPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit",
    "RewardQwenImageEditPlusPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit",
}
DIT_STOCK_PIPELINES: dict[str, tuple[str, str]] = {
    "FluxKontextPipeline": ("RewardFluxKontextPipeline", "from_flux_kontext"),
    "QwenImageEditPipeline": ("RewardQwenImageEditPipeline", "from_qwen_image_edit"),
    "QwenImageEditPlusPipeline": ("RewardQwenImageEditPlusPipeline", "from_qwen_image_edit"),
}

__all__ = [
    "HubUnavailableError",
    "convert_official",
    "converted_cache_dir",
    "detect_layout",
    "has_official_reward_keys",
    "load_local_pipeline",
    "load_pipeline",
    "resolve_device",
    "resolve_dtype",
    "smartedit_release_folder",
]


def detect_layout(folder: str | os.PathLike) -> str:
    """Classify a local folder: `"reward"` (saved RewardEditPipeline), `"smartedit"` (saved RewardSmartEditPipeline),
    `"official"` (official stage-2 folder),
    `"official-root"` (the release root holding `stage2_reward_instruct_pix2pix/`), `"instruct-pix2pix"`,
    `"reward-dit"` (a saved DiT reward pipeline, e.g. `RewardFluxKontextPipeline`) or `"stock-dit"` (a stock DiT
    editor such as `FluxKontextPipeline`, see `DIT_STOCK_PIPELINES`).

    The one release-layout rule: the pipeline loaders and the trainer (`--pretrained_model_name_or_path`) call it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`model` folder {str(folder)!r} does not exist (or is not a folder)")
    if (folder / OFFICIAL_STAGE2_FOLDER / "model_index.json").is_file():
        return "official-root"
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"`model` folder {str(folder)!r} has no model_index.json: not a diffusers pipeline folder"
        )
    model_index = json.loads(index_path.read_text(encoding="utf-8"))
    if "bridge" in model_index and "llm" in model_index:  # a saved RewardSmartEditPipeline (docs/smartedit.md)
        return "smartedit"
    pipeline_class = model_index.get("_class_name")
    if isinstance(pipeline_class, list) and pipeline_class:  # saved reward pipelines: [loader module, class]
        pipeline_class = pipeline_class[-1]
    if pipeline_class in DIT_REWARD_PIPELINES:
        return "reward-dit"
    if pipeline_class in DIT_STOCK_PIPELINES:
        return "stock-dit"
    unet_entry = model_index.get("unet") or [None, None]
    if unet_entry[1] == "RewardUNet2DConditionModel":
        return "reward"
    if has_official_reward_keys(folder / "unet"):
        return "official"
    return "instruct-pix2pix"


def has_official_reward_keys(unet_folder: str | os.PathLike) -> bool:
    """Whether a local UNet folder's safetensors weights (single file or sharded) carry the official reward keys."""
    from safetensors import safe_open

    unet_folder = Path(unet_folder)
    weights = unet_folder / "diffusion_pytorch_model.safetensors"
    index = unet_folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        keys = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    elif weights.is_file():
        with safe_open(str(weights), framework="pt") as handle:
            keys = list(handle.keys())
    else:
        return False
    return any(key.startswith(OFFICIAL_REWARD_KEY_PREFIXES) for key in keys)


def load_local_pipeline(folder: str | os.PathLike, **kwargs: Any) -> RewardEditPipeline:
    """Load a local folder of any supported layout (see `detect_layout`)."""
    layout = detect_layout(folder)
    if layout == "smartedit":
        from .pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline

        return RewardSmartEditPipeline.from_pretrained(folder, **kwargs)
    if layout in ("reward-dit", "stock-dit"):
        return _load_dit_pipeline(folder, layout, **kwargs)
    if layout == "reward":
        return RewardEditPipeline.from_pretrained(folder, **kwargs)
    if layout == "official-root":
        return RewardEditPipeline.from_official(Path(folder) / OFFICIAL_STAGE2_FOLDER, **kwargs)
    if layout == "official":
        return RewardEditPipeline.from_official(folder, **kwargs)
    logger.warning(
        "%s is a plain InstructPix2Pix checkpoint: wrapped with zero-initialised reward modules, so the reward "
        "conditions have no effect until the model is trained (reward-edit train --stage 2)",
        folder,
    )
    return RewardEditPipeline.from_instruct_pix2pix(folder, **kwargs)


def _load_dit_pipeline(folder: str | os.PathLike, layout: str, **kwargs: Any) -> Any:
    import importlib

    pipeline_class = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    pipeline_class = pipeline_class[-1] if isinstance(pipeline_class, list) else pipeline_class
    if layout == "reward-dit":
        module = importlib.import_module(DIT_REWARD_PIPELINES[pipeline_class])
        return getattr(module, pipeline_class).from_pretrained(folder, **kwargs)
    reward_class, wrap_method = DIT_STOCK_PIPELINES[pipeline_class]
    logger.warning(
        "%s is a stock %s: wrapped with zero-initialised reward modules, so the reward conditions have no effect "
        "until the model is trained (reward-edit train --backbone ...)",
        folder,
        pipeline_class,
    )
    module = importlib.import_module(DIT_REWARD_PIPELINES[reward_class])
    return getattr(getattr(module, reward_class), wrap_method)(folder, **kwargs)


def convert_official(
    repo_id: str = OFFICIAL_REPO_ID,
    revision: str | None = None,
    output_dir: str | os.PathLike | None = None,
    name: str = "repo_id",
) -> Path:
    """Download the official stage-2 folder, convert it to a `RewardEditPipeline` folder and return that folder.

    Without `output_dir` the conversion is cached (`converted_cache_dir()`) and later calls reuse it without touching
    the network; with `output_dir` it is always written there (replacing the pipeline files of that name).
    """
    cached = output_dir is None
    target = (
        Path(output_dir)
        if not cached
        else converted_cache_dir() / f"{repo_id.replace('/', '--')}--{revision or 'main'}"
    )
    if cached and (target / "model_index.json").is_file():
        return target
    stage2 = download_pipeline_files(repo_id, subfolder=OFFICIAL_STAGE2_FOLDER, name=name, revision=revision)
    logger.info("converting the official weights from %s to %s", repo_id, target)
    pipe = RewardEditPipeline.from_official(stage2)
    if not cached:
        pipe.save_pretrained(target)
        return target
    return write_folder_aside(target, pipe.save_pretrained)  # no half-written folder in the cache on a crash


def smartedit_release_folder(repo_id: str, revision: str | None = None, allow_pickle: bool = False) -> Path:
    """The converted folder of a SmartEdit release on the Hub: the cached conversion, else (only with
    `allow_pickle=True`) a new one; without either a `FileNotFoundError` that names the command to run."""
    from .convert_smartedit import convert_smartedit_release, smartedit_cache_dir

    cached = smartedit_cache_dir(repo_id, revision)
    if (cached / "model_index.json").is_file():
        return cached
    if not allow_pickle:
        raise FileNotFoundError(
            f"`model` {repo_id!r} is the SmartEdit release (pickle files, plus parts from other repos), which is "
            "converted once into a pipeline folder, and it has not been converted here yet. If you trust the "
            f"release, run `reward-edit convert-smartedit {repo_id} --allow-pickle` (Python: "
            f"load_pipeline({repo_id!r}, allow_pickle=True)); later loads use the conversion in {cached}"
        )
    return convert_smartedit_release(repo_id, revision=revision, allow_pickle=True)


def load_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    torch_dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    execution_device: str | torch.device | None = None,
    allow_pickle: bool = False,
) -> RewardEditPipeline:
    """Load a `RewardEditPipeline` from a local folder or a Hub repo id and move it to `device`/`dtype`.

    `device` and `dtype` (``torch_dtype`` is its older name) follow `reward_edit_pipeline.devices` (``"auto"``: CUDA
    and float16 when available; float16 on the CPU is refused, judged on `execution_device` when the caller moves
    the pipeline there itself after loading). The official repo id (`Gstar666/Reward-InsPix2Pix`,
    the default) is converted once and cached. A SmartEdit release id (`TencentARC/SmartEdit-7B`, `-13B`) loads its
    cached conversion (`reward-edit convert-smartedit`); without one it is converted only with `allow_pickle=True`
    (the release is pickle files), else `FileNotFoundError` names the command. A local folder's weights are read from
    safetensors only unless `allow_pickle=True` (`downloads.apply_pickle_rule`). A path that does not exist raises
    `FileNotFoundError`; a repo id the Hub cannot serve raises `HubUnavailableError`.
    """
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"give `dtype` or `torch_dtype` (its older name), not both: got {dtype!r} and {torch_dtype!r}")
    device = resolve_device(device)
    # the CPU half-precision rule is about where the model runs: a caller that loads on the CPU and moves the model
    # later (ComfyUI's model management) names that device as `execution_device`
    run_on = resolve_device(execution_device, name="execution_device") if execution_device is not None else device
    dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, run_on)
    if os.path.isdir(model):
        pipe = load_local_pipeline(model, allow_pickle=allow_pickle, **{DTYPE_KWARG: dtype})
    elif os.path.exists(model):
        raise FileNotFoundError(
            f"`model` {os.fspath(model)!r} is a file; give a pipeline folder (with model_index.json)"
        )
    elif str(model) == OFFICIAL_REPO_ID:
        pipe = RewardEditPipeline.from_pretrained(convert_official(str(model), revision), **{DTYPE_KWARG: dtype})
    elif str(model) in SMARTEDIT_RELEASES:
        folder = smartedit_release_folder(str(model), revision, allow_pickle)
        pipe = load_local_pipeline(folder, **{DTYPE_KWARG: dtype})
    elif looks_like_repo_id(model):
        pipe = load_local_pipeline(
            download_pipeline_files(str(model), name="model", revision=revision), **{DTYPE_KWARG: dtype}
        )
    else:
        raise FileNotFoundError(
            f"`model` folder {os.fspath(model)!r} does not exist (and it is not a Hub repo id of the form owner/name)"
        )
    return pipe.to(device)
