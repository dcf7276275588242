"""One loader for every model source: a saved `RewardEditPipeline`, a plain InstructPix2Pix checkpoint, the official
release layout, or a Hub repo id of any of these. The CLI, the ComfyUI nodes and the benchmark all call
`load_pipeline`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .pipelines.pipeline_reward_edit import DTYPE_KWARG, PIPELINE_ALLOW_PATTERNS, RewardEditPipeline

logger = logging.getLogger(__name__)

OFFICIAL_REPO_ID = "Gstar666/Reward-InsPix2Pix"
OFFICIAL_STAGE2_FOLDER = "stage2_reward_instruct_pix2pix"
DEFAULT_MODEL = OFFICIAL_REPO_ID
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub could not be reached (offline, blocked, or no network) and nothing is cached."""


def converted_cache_dir() -> Path:
    """Where converted official weights are kept (`$REWARD_EDIT_CACHE`, default `~/.cache/reward_edit_pipeline`)."""
    root = os.environ.get("REWARD_EDIT_CACHE") or os.path.join(Path.home(), ".cache", "reward_edit_pipeline")
    return Path(root) / "converted"


def detect_layout(folder: str | os.PathLike) -> str:
    """Classify a local folder: `"reward"` (saved RewardEditPipeline), `"official"` (official stage-2 folder),
    `"official-root"` (the release root holding `stage2_reward_instruct_pix2pix/`), `"instruct-pix2pix"`."""
    folder = Path(folder)
    if (folder / OFFICIAL_STAGE2_FOLDER / "model_index.json").is_file():
        return "official-root"
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"`model` folder {str(folder)!r} has no model_index.json: not a diffusers pipeline folder"
        )
    model_index = json.loads(index_path.read_text(encoding="utf-8"))
    unet_entry = model_index.get("unet") or [None, None]
    if unet_entry[1] == "RewardUNet2DConditionModel":
        return "reward"
    if _has_official_reward_keys(folder / "unet"):
        return "official"
    return "instruct-pix2pix"


def _has_official_reward_keys(unet_folder: Path) -> bool:
    from safetensors import safe_open

    weights = unet_folder / "diffusion_pytorch_model.safetensors"
    index = unet_folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        return "text_linear.weight" in json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    if weights.is_file():
        with safe_open(str(weights), framework="pt") as handle:
            return "text_linear.weight" in handle.keys()
    return False


def load_local_pipeline(folder: str | os.PathLike, **kwargs: Any) -> RewardEditPipeline:
    """Load a local folder of any supported layout (see `detect_layout`)."""
    layout = detect_layout(folder)
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


def _snapshot(repo_id: str, revision: str | None, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as error:
        raise HubUnavailableError(
            f"cannot reach the Hugging Face Hub to download {repo_id!r} and it is not in the local cache "
            f"({type(error).__name__}); pass a local pipeline folder with --model PATH (model=PATH)"
        ) from error


def convert_official(
    repo_id: str = OFFICIAL_REPO_ID, revision: str | None = None, output_dir: str | os.PathLike | None = None
) -> Path:
    """Download the official stage-2 folder, convert it to a `RewardEditPipeline` folder and return that folder.

    The conversion is cached (`converted_cache_dir()`); later calls reuse it without touching the network.
    """
    target = (
        Path(output_dir)
        if output_dir
        else converted_cache_dir() / f"{repo_id.replace('/', '--')}--{revision or 'main'}"
    )
    if (target / "model_index.json").is_file():
        return target
    snapshot = _snapshot(repo_id, revision, [f"{OFFICIAL_STAGE2_FOLDER}/*", f"{OFFICIAL_STAGE2_FOLDER}/**/*"])
    logger.info("converting the official weights from %s to %s (once)", repo_id, target)
    pipe = RewardEditPipeline.from_official(snapshot / OFFICIAL_STAGE2_FOLDER)
    partial = target.with_name(target.name + ".partial")  # written aside, then renamed: no half folder on crash
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def resolve_dtype(torch_dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """`None`/`"auto"` → float16 on CUDA, float32 elsewhere; names from `DTYPES`."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype in (None, "auto"):
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if torch_dtype not in DTYPES:
        raise ValueError(f"`torch_dtype` must be one of {['auto', *DTYPES]}, got {torch_dtype!r}")
    return DTYPES[torch_dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/`"auto"` → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    torch_dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> RewardEditPipeline:
    """Load a `RewardEditPipeline` from a local folder or a Hub repo id and move it to `device`/`torch_dtype`.

    The official repo id (`Gstar666/Reward-InsPix2Pix`, the default) is converted once and cached. Raises
    `HubUnavailableError` when a repo id is needed but the Hub cannot be reached.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(torch_dtype, device)
    if os.path.isdir(model):
        pipe = load_local_pipeline(model, **{DTYPE_KWARG: dtype})
    elif str(model) == OFFICIAL_REPO_ID:
        pipe = RewardEditPipeline.from_pretrained(convert_official(str(model), revision), **{DTYPE_KWARG: dtype})
    elif isinstance(model, str) and model.count("/") == 1 and not os.path.exists(model):
        pipe = load_local_pipeline(_snapshot(model, revision, list(PIPELINE_ALLOW_PATTERNS)), **{DTYPE_KWARG: dtype})
    else:
        raise FileNotFoundError(f"`model` {str(model)!r} is neither a local folder nor a Hub repo id (owner/name)")
    return pipe.to(device)
