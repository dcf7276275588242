"""Publish reward-edit models and reward datasets to the Hugging Face Hub, and pull them (or the official release).

>>> from reward_edit_pipeline.hub import push_model, push_dataset, pull_model  # doctest: +SKIP
>>> push_model("runs/stage2", "me/reward-edit-sd15")            # safetensors folder + generated model card
>>> push_dataset("rewards.sqlite", "me/my-rewards")              # parquet shards with Image features + card
>>> pipe = pull_model("me/reward-edit-sd15")                     # download, then `load_pipeline`

The ``reward-edit push-model / push-dataset / pull-model`` verbs are thin shells over these functions. Tokens come
from ``HF_TOKEN`` or the huggingface_hub login and are never printed. See docs/hub.md.

The names are imported on first use, so ``import reward_edit_pipeline.hub`` (and the verbs' ``--help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module of this package that defines it
_EXPORTS: dict[str, str] = {
    "HubTokenError": "._common",
    "PickleFileError": "._common",
    "PushResult": "._common",
    "RewardRow": ".dataset_layout",
    "download_model": ".pull",
    "download_official_annotations": ".pull",
    "pull_model": ".pull",
    "pull_official_dataset": ".pull",
    "pull_official_model": ".pull",
    "push_dataset": ".push_dataset",
    "stage_dataset_folder": ".push_dataset",
    "push_model": ".push_model",
    "stage_model_folder": ".push_model",
    "reward_records_from_dataset": ".sources",
}

__all__ = [
    "HubTokenError",
    "PickleFileError",
    "PushResult",
    "RewardRow",
    "download_model",
    "download_official_annotations",
    "pull_model",
    "pull_official_dataset",
    "pull_official_model",
    "push_dataset",
    "push_model",
    "reward_records_from_dataset",
    "stage_dataset_folder",
    "stage_model_folder",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._common import HubTokenError, PickleFileError, PushResult
    from .dataset_layout import RewardRow
    from .pull import (
        download_model,
        download_official_annotations,
        pull_model,
        pull_official_dataset,
        pull_official_model,
    )
    from .push_dataset import push_dataset, stage_dataset_folder
    from .push_model import push_model, stage_model_folder
    from .sources import reward_records_from_dataset


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
