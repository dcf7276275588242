"""Reward conventions shared by the model, pipeline, judge and training code (no torch needed).

Order everywhere: following, preserving, quality. Scores are floats in [0, 5]. The failure text given to the model
is the three per-perspective failure texts joined with ``"; "``; a perspective with nothing to report is written
``"None"`` (the official training and inference convention, so "no failure at all" is ``"None; None; None"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

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


_SCORE_SEPARATOR = re.compile(r"\s*,\s*|\s+")


def parse_score_text(text: str, name: str = "reward_scores") -> tuple[float, float, float]:
    """Parse ``"5,5,5"``, ``"5, 4.5, 5"`` or ``"5 5 5"`` into a validated (following, preserving, quality) triple.

    Raises `ValueError` naming `name`, the expected format and the range [0, 5]; never clamps.
    """
    if not isinstance(text, str):
        raise TypeError(f"`{name}` must be a text like '5,5,5', got {type(text).__name__}")
    parts = [part for part in _SCORE_SEPARATOR.split(text.strip()) if part]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"`{name}` must be three comma-separated numbers in [{MIN_SCORE:g}, {MAX_SCORE:g}] "
            f"(following,preserving,quality; spaces also separate), got {text!r}"
        ) from None
    return validate_score_triple(values, name=name)


def _as_nested_list(value: Any) -> Any:
    """numpy arrays and torch tensors (duck-typed, so this module needs neither) → nested Python lists."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        return value.tolist()
    return value


def parse_reward_scores(
    reward_scores: Any, batch_size: int | None = None, name: str = "reward_scores"
) -> list[tuple[float, float, float]]:
    """The one parser for reward scores, used by every front end. Returns validated rows (one triple per prompt).

    Accepts a text (``"5,5,5"``, ``"5 5 5"``), a triple (list/tuple of numbers), a list of triples, a numpy array or a
    torch tensor of shape ``[3]`` or ``[B, 3]``. With `batch_size`, one triple is repeated for every prompt and a
    list of triples must hold exactly `batch_size` of them. Each value must be a finite number in [0, 5]; nothing is
    clamped. Errors are `ValueError`/`TypeError` naming `name` and the accepted range.
    """
    shape = getattr(reward_scores, "shape", None)
    if shape is not None and (len(shape) not in (1, 2) or shape[-1] != len(PERSPECTIVES)):
        raise ValueError(f"`{name}` must have shape [3] or [B, 3] (following, preserving, quality), got {tuple(shape)}")
    value = _as_nested_list(reward_scores)
    if isinstance(value, str):
        rows = [parse_score_text(value, name=name)]
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        if len(value) > 0 and all(isinstance(row, Sequence) and not isinstance(row, (str, bytes)) for row in value):
            if any(isinstance(item, Sequence) for row in value for item in row):
                raise ValueError(
                    f"`{name}` must have shape [3] or [B, 3] (following, preserving, quality), got a deeper nesting"
                )
            rows = [validate_score_triple(row, name=f"{name}[{index}]") for index, row in enumerate(value)]
        elif len(value) > 0 and any(isinstance(row, Sequence) and not isinstance(row, str) for row in value):
            raise ValueError(f"`{name}` mixes numbers and triples: {value!r}; pass one triple or a list of triples")
        else:
            rows = [validate_score_triple(value, name=name)]
    else:
        raise TypeError(
            f"`{name}` must be three numbers in [{MIN_SCORE:g}, {MAX_SCORE:g}] (following, preserving, quality): "
            f"a text like '5,5,5', a triple, a list of triples, or an array/tensor of shape [3] or [B, 3]; "
            f"got {type(reward_scores).__name__}"
        )
    if batch_size is not None:
        if len(rows) == 1:
            rows = rows * batch_size
        elif len(rows) != batch_size:
            raise ValueError(
                f"`{name}` must have shape [3] or [{batch_size}, 3] (one triple, or one per prompt): it has "
                f"{len(rows)} triples but the batch has {batch_size} prompts"
            )
    return rows


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
    """Map one user-facing failure-text value to the string the model is conditioned on (every front end calls this).

    ====================================================  ==================================================
    value                                                 text the model is conditioned on
    ====================================================  ==================================================
    ``None``                                              ``no_failure_text`` (the model's "no failure"
                                                          convention, ``"None; None; None"`` for the paper)
    ``""`` or blank (only whitespace)                     ``no_failure_text`` (same as ``None``)
    a non-blank string                                    the string, stripped of surrounding whitespace
    ``(following, preserving, quality)`` 3-tuple/list     joined with ``"; "``, a ``None``/blank entry written
                                                          ``"None"``; all three ``None``/blank → same as ``None``
    ====================================================  ==================================================

    (For a batch, the pipeline also takes a *list* with one of these values per prompt.) Anything else raises a
    `TypeError` naming `failure_text`.
    """
    if failure_text is None:
        return no_failure_text
    if isinstance(failure_text, str):
        return failure_text.strip() or no_failure_text
    if isinstance(failure_text, Sequence) and not isinstance(failure_text, bytes):
        joined = join_failure_texts(failure_text)
        if all(part == NO_FAILURE_PART for part in joined.split(FAILURE_TEXT_SEPARATOR)) and all(
            entry is None or not str(entry).strip() for entry in failure_text
        ):
            return no_failure_text
        return joined
    raise TypeError(
        "`failure_text` must be None, a string, or a 3-tuple of per-perspective strings, "
        f"got {type(failure_text).__name__}"
    )
