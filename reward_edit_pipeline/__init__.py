"""reward-edit-pipeline: Multi-Reward as Condition for Instruction-based Image Editing (Gu et al., ICLR 2025).

Heavy objects (torch, diffusers) are imported lazily, so ``import reward_edit_pipeline.judge`` stays light. The names
below are part of a public contract: saved pipelines record ``["reward_edit_pipeline", "RewardUNet2DConditionModel"]``
in ``model_index.json``, and diffusers looks the class (and ``ModelMixin``) up on this module.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

DISTRIBUTION_NAME = "reward-edit-pipeline"

_LAZY_ATTRIBUTES: dict[str, str] = {
    "RewardUNet2DConditionModel": "reward_edit_pipeline.models.unet_2d_reward",
    "LatentRewardAttention": "reward_edit_pipeline.models.unet_2d_reward",
    "RewardEditPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_edit",
    "RewardFluxTransformer2DModel": "reward_edit_pipeline.models.transformer_flux_reward",
    "RewardFluxKontextPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext",
    "RewardQwenImageTransformer2DModel": "reward_edit_pipeline.models.transformer_qwenimage_reward",
    "RewardQwenImageEditPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit",
    "RewardQwenImageEditPlusPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit",
    "RewardSmartEditPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_smartedit",
    "SmartEditPipeline": "reward_edit_pipeline.pipelines.pipeline_reward_smartedit",
    "SmartEditBridge": "reward_edit_pipeline.models.smartedit_bridge",
    "load_pipeline": "reward_edit_pipeline.loading",
    # `DiffusionPipeline.from_pretrained` looks a component's base classes up on its library module (here: this one)
    # to pick the method that loads it, so the library module must expose them (docs/architecture.md, "Loading").
    "ModelMixin": "diffusers",
    "DiffusionPipeline": "diffusers",
}

__all__ = [
    "RewardUNet2DConditionModel",
    "LatentRewardAttention",
    "RewardEditPipeline",
    "RewardFluxTransformer2DModel",
    "RewardFluxKontextPipeline",
    "RewardQwenImageTransformer2DModel",
    "RewardQwenImageEditPipeline",
    "RewardQwenImageEditPlusPipeline",
    "RewardSmartEditPipeline",
    "SmartEditPipeline",
    "SmartEditBridge",
    "load_pipeline",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import DiffusionPipeline, ModelMixin  # noqa: F401

    from .loading import load_pipeline
    from .models.smartedit_bridge import SmartEditBridge
    from .models.transformer_flux_reward import RewardFluxTransformer2DModel
    from .models.transformer_qwenimage_reward import RewardQwenImageTransformer2DModel
    from .models.unet_2d_reward import LatentRewardAttention, RewardUNet2DConditionModel
    from .pipelines.pipeline_reward_edit import RewardEditPipeline
    from .pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline
    from .pipelines.pipeline_reward_qwenimage_edit import (
        RewardQwenImageEditPipeline,
        RewardQwenImageEditPlusPipeline,
    )
    from .pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline, SmartEditPipeline


def _read_version() -> str:
    """The version written once, in ``pyproject.toml``: from the installed metadata, else (a clone used without
    installing it, e.g. in ComfyUI's ``custom_nodes/``) from the clone's ``pyproject.toml``."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION_NAME)
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        project_table = pyproject.read_text(encoding="utf-8").partition("[project]")[2].partition("\n[")[0]
        match = re.search(r'^version\s*=\s*"([^"]+)"', project_table, flags=re.MULTILINE)
        if match:
            return match.group(1)
    return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # computed on first use: `import reward_edit_pipeline` reads no metadata
        globals()["__version__"] = _read_version()
        return globals()["__version__"]
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'reward_edit_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | {"__version__"})
