"""The layout of a pushed reward dataset: its columns, their `datasets.Features`, and `RewardRow`, one row.

Both the readers (`reward_edit_pipeline.hub.sources`) and the writer (`reward_edit_pipeline.hub.push_dataset`) use it;
it imports neither of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reward_edit_pipeline.rewards import MAX_SCORE, MIN_SCORE, PERSPECTIVES

SCORE_COLUMNS: tuple[str, ...] = tuple(f"{perspective}_score" for perspective in PERSPECTIVES)
FAILURE_COLUMNS: tuple[str, ...] = tuple(f"{perspective}_failure" for perspective in PERSPECTIVES)
COLUMNS: tuple[str, ...] = (
    "id",
    "instruction",
    "original",
    "edited",
    *(column for pair in zip(SCORE_COLUMNS, FAILURE_COLUMNS) for column in pair),
    "judge_model",
    "prompt_id",
)


def dataset_features():
    """The `datasets.Features` of a pushed reward dataset."""
    from datasets import Features, Image, Value

    features: dict[str, Any] = {
        "id": Value("string"),
        "instruction": Value("string"),
        "original": Image(),
        "edited": Image(),
    }
    for score_column, failure_column in zip(SCORE_COLUMNS, FAILURE_COLUMNS):
        features[score_column] = Value("float32")
        features[failure_column] = Value("string")
    features["judge_model"] = Value("string")
    features["prompt_id"] = Value("string")
    return Features(features)


@dataclass(frozen=True)
class RewardRow:
    """One graded triplet, ready for the parquet shards (images as encoded file bytes, never re-encoded)."""

    item_id: str
    instruction: str
    original_image: bytes
    original_filename: str
    edited_image: bytes
    edited_filename: str
    scores: tuple[float, float, float]
    failure_texts: tuple[str, str, str]
    judge_model: str
    prompt_id: str

    def __post_init__(self) -> None:
        for name in ("item_id", "instruction", "judge_model", "prompt_id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(
                    f"row {self.item_id!r}: `{name}` must be a string, got {type(getattr(self, name)).__name__}"
                )
        for name in ("original_image", "edited_image"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not value:
                raise ValueError(f"row {self.item_id!r}: `{name}` must be the non-empty bytes of an image file")
        if len(self.scores) != len(PERSPECTIVES) or len(self.failure_texts) != len(PERSPECTIVES):
            raise ValueError(
                f"row {self.item_id!r}: need 3 scores and 3 failure texts (following, preserving, quality)"
            )
        for perspective, score in zip(PERSPECTIVES, self.scores):
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f"row {self.item_id!r}: {perspective} score must be a finite number, got {score!r}")
            if not MIN_SCORE <= score <= MAX_SCORE:
                raise ValueError(
                    f"row {self.item_id!r}: {perspective} score must be in [{MIN_SCORE:g}, {MAX_SCORE:g}], got {score!r}"
                )
        for perspective, text in zip(PERSPECTIVES, self.failure_texts):
            if not isinstance(text, str):
                raise TypeError(f"row {self.item_id!r}: {perspective} failure text must be a string, got {text!r}")

    def to_example(self) -> dict[str, Any]:
        example: dict[str, Any] = {
            "id": self.item_id,
            "instruction": self.instruction,
            "original": {"bytes": self.original_image, "path": self.original_filename},
            "edited": {"bytes": self.edited_image, "path": self.edited_filename},
        }
        for score_column, failure_column, score, text in zip(
            SCORE_COLUMNS, FAILURE_COLUMNS, self.scores, self.failure_texts
        ):
            example[score_column] = float(score)
            example[failure_column] = text
        example["judge_model"] = self.judge_model
        example["prompt_id"] = self.prompt_id
        return example
