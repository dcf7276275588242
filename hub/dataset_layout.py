"""The layout of a pushed reward dataset: its columns, their `datasets.Features`, and `RewardRow`, one row.

Both the readers (`reward_edit_pipeline.hub.sources`) and the writer (`reward_edit_pipeline.hub.push_dataset`) use it;
it imports neither of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reward_edit_pipeline.records import RewardRecord
from reward_edit_pipeline.rewards import PERSPECTIVES

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
    """One graded triplet, ready for the parquet shards: its `RewardRecord` (id, scores, failure texts), the
    instruction, the images as encoded file bytes (never re-encoded) and where the rewards came from."""

    reward: RewardRecord
    instruction: str
    original_image: bytes
    original_filename: str
    edited_image: bytes
    edited_filename: str
    judge_model: str = ""
    prompt_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.reward, RewardRecord):
            raise TypeError(f"`reward` must be a RewardRecord, got {type(self.reward).__name__}")
        if not self.reward.item_id:
            raise ValueError("`reward.item_id` must name the triplet (a pushed row needs an id)")
        for name in ("instruction", "original_filename", "edited_filename", "judge_model", "prompt_id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(
                    f"row {self.item_id!r}: `{name}` must be a string, got {type(getattr(self, name)).__name__}"
                )
        for name in ("original_image", "edited_image"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not value:
                raise ValueError(f"row {self.item_id!r}: `{name}` must be the non-empty bytes of an image file")

    @property
    def item_id(self) -> str:
        return self.reward.item_id

    def to_example(self) -> dict[str, Any]:
        example: dict[str, Any] = {
            "id": self.item_id,
            "instruction": self.instruction,
            "original": {"bytes": self.original_image, "path": self.original_filename},
            "edited": {"bytes": self.edited_image, "path": self.edited_filename},
        }
        for score_column, failure_column, score, text in zip(
            SCORE_COLUMNS, FAILURE_COLUMNS, self.reward.scores, self.reward.failure_texts
        ):
            example[score_column] = score
            example[failure_column] = text
        example["judge_model"] = self.judge_model
        example["prompt_id"] = self.prompt_id
        return example
