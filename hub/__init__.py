"""Publish reward-edit models and reward datasets to the Hugging Face Hub, and pull them (or the official release).

>>> from reward_edit_pipeline.hub import push_model, push_dataset, pull_model  # doctest: +SKIP
>>> push_model("runs/stage2", "me/reward-edit-sd15")            # safetensors folder + generated model card
>>> push_dataset("rewards.sqlite", "me/my-rewards")              # parquet shards with Image features + card
>>> pipe = pull_model("me/reward-edit-sd15")                     # download, then `load_pipeline`

Tokens come from ``HF_TOKEN`` or the huggingface_hub login and are never printed. See docs/hub.md.
"""

from __future__ import annotations

from ._common import HubTokenError, PickleFileError, PushResult
from .pull import (
    download_model,
    download_official_annotations,
    pull_model,
    pull_official_dataset,
    pull_official_model,
)
from .push_dataset import RewardRow, push_dataset, stage_dataset_folder
from .push_model import push_model, stage_model_folder
from .sources import reward_records_from_dataset

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
