"""Turn a judge's reply text into a judgment, tolerantly but without guessing (and never with ``eval``).

Accepted, in order of preference:

1. the JSON object asked for by the response schema: ``{"score": 4.5, "verdict": "yes", "failure_text": ""}``;
2. the same inside a Markdown code fence (```` ```json ... ``` ````) or surrounded by prose;
3. a Python-dict-like literal with single quotes, ``True``/``False``/``None`` and trailing commas, e.g.
   ``{'following': 'yes', 'score': 4.5}`` (parsed by a small literal reader, not by Python);
4. a bare number (``"4"``), read as the score.

Field names are matched case-insensitively with a few aliases (``Score``/``rating``; ``verdict``/``answer``/the
perspective name; ``failure_text``/``Negative Prompt``/``failure_points``). A score that is missing, not a number or
outside [0, 5], a verdict other than yes/no, an empty reply, a refusal and anything else unparsable become failed
judgments carrying the raw reply.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..rewards import MAX_SCORE, MIN_SCORE
from .base import PerspectiveJudgment


class ReplyParseError(ValueError):
    """A reply that holds no usable judgment; ``reason`` is a `FAILURE_REASONS` code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_FENCE = re.compile(r"```[ \t]*(?:json|JSON|python|py)?[ \t]*\n?(.*?)```", re.DOTALL)
_BARE_NUMBER = re.compile(r"^\s*(?:score\s*[:=]\s*)?([-+]?\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*\.?\s*$", re.IGNORECASE)
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i cannot|i can't|i can not|i'm unable|i am unable|i won't|as an ai)",
    re.IGNORECASE,
)

SCORE_KEYS = ("score", "rating", "scores")
VERDICT_KEYS = ("verdict", "answer", "judgment", "judgement")
FAILURE_TEXT_KEYS = ("failure_text", "negative prompt", "negative_prompt", "failure_points", "failures", "failure")


class _LiteralReader:
    """A recursive-descent reader for JSON and Python-like literals (dicts, lists, strings, numbers, constants)."""

    _CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
    _NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
    _ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> ValueError:
        return ValueError(f"{message} at position {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def read(self) -> Any:
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.error("unexpected end")
        char = self.text[self.pos]
        if char == "{":
            return self.read_container("{", "}", is_dict=True)
        if char == "[":
            return self.read_container("[", "]", is_dict=False)
        if char in "\"'":
            return self.read_string(char)
        match = self._NUMBER.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            return float(match.group()) if any(c in match.group() for c in ".eE") else int(match.group())
        for word, value in self._CONSTANTS.items():
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return value
        raise self.error(f"unexpected character {char!r}")

    def read_string(self, quote: str) -> str:
        self.pos += 1
        parts: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                following = self.text[self.pos + 1]
                if following == "u" and self.pos + 6 <= len(self.text):
                    parts.append(chr(int(self.text[self.pos + 2 : self.pos + 6], 16)))
                    self.pos += 6
                    continue
                parts.append(self._ESCAPES.get(following, following))
                self.pos += 2
                continue
            if char == quote:
                self.pos += 1
                return "".join(parts)
            parts.append(char)
            self.pos += 1
        raise self.error("unterminated string")

    def read_container(self, opening: str, closing: str, is_dict: bool) -> Any:
        self.pos += 1
        result: Any = {} if is_dict else []
        while True:
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == closing:
                self.pos += 1
                return result
            if is_dict:
                key = self.read()
                if not isinstance(key, (str, int, float)):
                    raise self.error("dictionary keys must be strings or numbers")
                self.skip_space()
                if self.pos >= len(self.text) or self.text[self.pos] != ":":
                    raise self.error("expected ':'")
                self.pos += 1
                result[str(key)] = self.read()
            else:
                result.append(self.read())
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == ",":
                self.pos += 1
                continue
            if self.pos < len(self.text) and self.text[self.pos] == closing:
                self.pos += 1
                return result
            raise self.error(f"expected ',' or {closing!r}")


def read_literal(text: str) -> Any:
    """Read one JSON/Python-like literal that spans all of ``text`` (surrounding whitespace allowed)."""
    reader = _LiteralReader(text)
    value = reader.read()
    reader.skip_space()
    if reader.pos != len(text):
        raise reader.error("trailing text")
    return value


def _balanced_objects(text: str) -> list[str]:
    """Substrings of ``text`` that are brace-balanced ``{...}`` blocks (outermost only), quotes respected."""
    blocks: list[str] = []
    depth, start, quote = 0, -1, ""
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 2
                continue
            if char == quote:
                quote = ""
        elif char in "\"'" and depth > 0:
            quote = char
        elif char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                blocks.append(text[start : index + 1])
        index += 1
    return blocks


def extract_fields(text: str | None) -> dict[str, Any]:
    """Find the judgment object in a reply and return it as a dict (raises `ReplyParseError`)."""
    if text is None or not text.strip():
        raise ReplyParseError("empty_reply", "the reply is empty")
    stripped = text.strip()
    candidates = [stripped]
    candidates += [block.strip() for block in _FENCE.findall(stripped)]
    candidates += _balanced_objects(stripped)
    for candidate in candidates:
        for loader in (json.loads, read_literal):
            try:
                value = loader(candidate)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
                return value[0]
    match = _BARE_NUMBER.match(stripped)
    if match:
        return {"score": match.group(1)}
    if _REFUSAL.match(stripped):
        raise ReplyParseError("refusal", "the model declined to grade")
    raise ReplyParseError("unparsable_reply", "no JSON object, Python-like dict or bare score found in the reply")


def _lookup(fields: dict[str, Any], names: tuple[str, ...]) -> tuple[bool, Any]:
    lowered = {str(key).strip().lower(): value for key, value in fields.items()}
    for name in names:
        if name in lowered:
            return True, lowered[name]
    return False, None


def _to_score(value: Any) -> float:
    if isinstance(value, bool):
        raise ReplyParseError("invalid_score", f"the score must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        score = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?:/\s*5\s*)?", value):
        score = float(value.split("/")[0])
    else:
        raise ReplyParseError("invalid_score", f"the score must be a number, got {value!r}")
    if not math.isfinite(score) or not MIN_SCORE <= score <= MAX_SCORE:
        raise ReplyParseError(
            "score_out_of_range", f"the score must be in [{MIN_SCORE:g}, {MAX_SCORE:g}], got {value!r}"
        )
    return score


def _to_verdict(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and value.strip().strip(".").lower() in ("yes", "no"):
        return value.strip().strip(".").lower()
    raise ReplyParseError("invalid_verdict", f"the verdict must be 'yes' or 'no', got {value!r}")


def _to_failure_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "; ".join(part.strip() for part in value if part.strip())
    raise ReplyParseError("unparsable_reply", f"the failure text must be a string, got {value!r}")


def judgment_from_fields(perspective: str, fields: dict[str, Any], **kwargs: Any) -> PerspectiveJudgment:
    """Validate parsed fields into a `PerspectiveJudgment` (a failed one when a field is invalid)."""
    try:
        found, score_value = _lookup(fields, SCORE_KEYS)
        if not found:
            raise ReplyParseError("missing_score", f"no score field in {sorted(fields)}")
        score = _to_score(score_value)
        found, verdict_value = _lookup(fields, VERDICT_KEYS + (perspective,))
        verdict = _to_verdict(verdict_value) if found else None
        _, failure_value = _lookup(fields, FAILURE_TEXT_KEYS)
        failure_text = _to_failure_text(failure_value)
    except ReplyParseError as error:
        return PerspectiveJudgment.failure(perspective, error.reason, str(error), **kwargs)
    return PerspectiveJudgment.success(perspective, score, verdict, failure_text, **kwargs)  # type: ignore[arg-type]


def judgment_from_reply(perspective: str, reply: str | None, **kwargs: Any) -> PerspectiveJudgment:
    """Parse one reply text into a `PerspectiveJudgment`; the raw reply is always kept."""
    kwargs.setdefault("raw_reply", reply)
    try:
        fields = extract_fields(reply)
    except ReplyParseError as error:
        return PerspectiveJudgment.failure(perspective, error.reason, str(error), **kwargs)
    return judgment_from_fields(perspective, fields, **kwargs)


def combined_judgments_from_reply(
    perspectives: tuple[str, ...], reply: str | None, **kwargs: Any
) -> list[PerspectiveJudgment]:
    """Parse a combined single-call reply ``{"following": {...}, "preserving": {...}, "quality": {...}}``."""
    kwargs.setdefault("raw_reply", reply)
    try:
        fields = extract_fields(reply)
    except ReplyParseError as error:
        return [PerspectiveJudgment.failure(p, error.reason, str(error), **kwargs) for p in perspectives]
    judgments = []
    for perspective in perspectives:
        found, section = _lookup(fields, (perspective,))
        if not found or not isinstance(section, dict):
            judgments.append(
                PerspectiveJudgment.failure(
                    perspective, "unparsable_reply", f"no {perspective!r} object in the combined reply", **kwargs
                )
            )
        else:
            judgments.append(judgment_from_fields(perspective, section, **kwargs))
    return judgments
