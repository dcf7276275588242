"""The two record types every part of the project shares (no torch, no other module of the package but `rewards`).

- `Triplet`: one editing example ``(id, instruction, original image, edited image)``: what the judge grades, what the
  data readers yield and what training learns from.
- `RewardRecord`: the rewards of one triplet (three scores and three failure texts, in the order following,
  preserving, quality): what the annotation store holds, what every export/import format carries, what the Hub
  dataset publishes, what training conditions on and what the ComfyUI nodes pass to the edit.

They live here, below `judge/`, `data/`, `train/`, `hub/` and `comfy_nodes/`, so that all of those can use them
without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .rewards import PERSPECTIVES, join_failure_texts, validate_score_triple

NO_FAILURE_TEXTS: tuple[str, str, str] = ("", "", "")


@dataclass(frozen=True)
class Triplet:
    """One editing example.

    Attributes:
        id (`str`): a stable key (the folder name for InstructPix2Pix folders, matching RewardEdit_20K.json).
        instruction (`str`): the editing instruction.
        original / edited: image paths (`str`/`Path`), encoded `bytes`, or in-memory PIL images.
    """

    id: str
    instruction: str
    original: Any
    edited: Any

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"`Triplet.id` must be a non-empty string, got {self.id!r}")
        if not isinstance(self.instruction, str):
            raise TypeError(
                f"`Triplet.instruction` must be a string, got {type(self.instruction).__name__} ({self.id})"
            )


def image_reference(image: Any) -> str | None:
    """A printable reference for an image: its path, or ``None`` for in-memory images."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return None


@dataclass(frozen=True, kw_only=True)
class RewardRecord:
    """The rewards of one editing triplet.

    Attributes:
        scores (`tuple[float, float, float]`): following, preserving, quality, each a finite number in [0, 5]
            (validated, never clamped).
        failure_texts (`tuple[str, str, str]`): what the judge found wrong from each perspective; ``""`` when there
            is nothing to report. Readers of formats that spell "nothing" differently (the official JSON writes
            ``"None"``) convert at the boundary, so a record has one spelling.
        item_id (`str`): the triplet's id (``""`` for a record made by hand, e.g. the reward asked for at inference).

    >>> record = RewardRecord(scores=(4.5, 5, 3), failure_texts=("the hat is still red", "", ""), item_id="0000011")
    >>> record.following, record.failure_text
    (4.5, 'the hat is still red; None; None')
    """

    scores: tuple[float, float, float]
    failure_texts: tuple[str, str, str] = NO_FAILURE_TEXTS
    item_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", validate_score_triple(self.scores, "scores"))
        texts = tuple(self.failure_texts) if not isinstance(self.failure_texts, str) else (self.failure_texts,)
        if len(texts) != len(PERSPECTIVES) or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"`failure_texts` must be 3 strings (following, preserving, quality), got {texts!r}")
        object.__setattr__(self, "failure_texts", texts)
        if not isinstance(self.item_id, str):
            raise TypeError(f"`item_id` must be a string, got {type(self.item_id).__name__}")

    @property
    def following(self) -> float:
        return self.scores[0]

    @property
    def preserving(self) -> float:
        return self.scores[1]

    @property
    def quality(self) -> float:
        return self.scores[2]

    @property
    def failure_text(self) -> str:
        """The text the model is conditioned on: the three texts joined with ``"; "``, an empty one written
        ``"None"`` (`reward_edit_pipeline.rewards.join_failure_texts`)."""
        return join_failure_texts(self.failure_texts)

    def failure_text_of(self, perspective: str) -> str:
        """The failure text of one perspective (``"following"``, ``"preserving"`` or ``"quality"``)."""
        if perspective not in PERSPECTIVES:
            raise ValueError(f"`perspective` must be one of {PERSPECTIVES}, got {perspective!r}")
        return self.failure_texts[PERSPECTIVES.index(perspective)]
