"""Reward conventions shared by the model, pipeline, judge and training code (no torch needed).

Order everywhere: following, preserving, quality. Scores are floats in [0, 5]. The failure text given to the model
is the three per-perspective failure texts joined with ``"; "``; a perspective with nothing to report is written
``"None"`` (the official training and inference convention, so "no failure at all" is ``"None; None; None"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PERSPECTIVES: tuple[str, str, str] = ("following", "preserving", "quality")
MIN_SCORE: float = 0.0
MAX_SCORE: float = 5.0
BEST_SCORES: tuple[float, float, float] = (5.0, 5.0, 5.0)
FAILURE_TEXT_SEPARATOR: str = "; "
NO_FAILURE_PART: str = "None"
DEFAULT_NO_FAILURE_TEXT: str = FAILURE_TEXT_SEPARATOR.join([NO_FAILURE_PART] * len(PERSPECTIVES))


def validate_score_triple(scores: Sequence[float], name: str = "reward_scores") -> tuple[float, float, float]:
    """Check one (following, preserving, quality) triple and return it as floats.

    Raises `ValueError`/`TypeError` naming `name` and the accepted range; never clamps.
    """
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
        raise TypeError(f"`{name}` must be a sequence of 3 numbers (following, preserving, quality), got {scores!r}")
    if len(scores) != len(PERSPECTIVES):
        raise ValueError(
            f"`{name}` must have exactly 3 values (following, preserving, quality), got {len(scores)}: {list(scores)!r}"
        )
    values = []
    for perspective, value in zip(PERSPECTIVES, scores):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`{name}` {perspective} score must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or not MIN_SCORE <= value <= MAX_SCORE:
            raise ValueError(
                f"`{name}` {perspective} score must be a finite number in [{MIN_SCORE:g}, {MAX_SCORE:g}], got {value!r}"
            )
        values.append(value)
    return values[0], values[1], values[2]


def join_failure_texts(texts: Sequence[str | None], separator: str = FAILURE_TEXT_SEPARATOR) -> str:
    """Join per-perspective failure texts in score order, writing ``"None"`` for a missing or empty one.

    >>> join_failure_texts(["the hat is still red", None, ""])
    'the hat is still red; None; None'
    """
    if isinstance(texts, (str, bytes)) or len(texts) != len(PERSPECTIVES):
        raise ValueError(
            f"`failure_text` as per-perspective texts must be 3 entries (following, preserving, quality), got {texts!r}"
        )
    parts = []
    for perspective, text in zip(PERSPECTIVES, texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"`failure_text` {perspective} entry must be a string or None, got {type(text).__name__}")
        text = (text or "").strip()
        parts.append(text if text else NO_FAILURE_PART)
    return separator.join(parts)


def resolve_failure_text(
    failure_text: str | Sequence[str | None] | None, no_failure_text: str = DEFAULT_NO_FAILURE_TEXT
) -> str:
    """Map one user-facing failure-text value to the string the model is conditioned on.

    - ``None`` → the loaded model's "no failure" convention (``no_failure_text``);
    - a string → used as is (already joined);
    - a 3-tuple/list of per-perspective texts → joined with `join_failure_texts`.
    """
    if failure_text is None:
        return no_failure_text
    if isinstance(failure_text, str):
        return failure_text
    if isinstance(failure_text, Sequence):
        return join_failure_texts(failure_text)
    raise TypeError(
        "`failure_text` must be None, a string, or a 3-tuple of per-perspective strings, "
        f"got {type(failure_text).__name__}"
    )
