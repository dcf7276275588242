"""Reward records: reading and writing the per-item rewards that condition training.

Formats (`load_reward_records` reads them all; `export_store` writes the last four):

- an annotation store (SQLite, ``reward-edit annotate``);
- ``official-json``: the official ``RewardEdit_20K.json``: ``{key: [{"Score": s, "Negative Prompt": text}, ×3]}`` in
  the order following, preserving, quality; an empty failure text is written ``"None"`` (the official convention);
- ``jsonl`` / ``parquet`` / ``hf-dataset`` (``Dataset.save_to_disk``): one row per item with columns ``id,
  instruction, original, edited, status, scores, verdicts, failure_texts, errors, error_messages, raw_replies,
  prompt_ids, models`` (lists in perspective order; failed and pending items included with their reasons).

Only complete items (all three perspectives judged) become `RewardRecord`s; incomplete ones are counted and reported
(``on_incomplete="skip"`` logs a warning, ``"error"`` raises).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from ..judge.store import AnnotationStore, is_annotation_store
from ..records import RewardRecord
from ..rewards import NO_FAILURE_PART, PERSPECTIVES
from .jsonl import iter_jsonl_objects
from .triplets import is_saved_dataset_folder

logger = logging.getLogger(__name__)

EXPORT_FORMATS: tuple[str, ...] = ("official-json", "jsonl", "parquet", "hf-dataset")
OFFICIAL_SCORE_KEY = "Score"
OFFICIAL_TEXT_KEY = "Negative Prompt"
OFFICIAL_PROMPT_ID = "official-rewardedit20k"


# ----------------------------------------------------------------------------------------------------- export rows
def store_rows(store: Any) -> Iterator[dict[str, Any]]:
    """Export rows (see module docstring) of every item in an `AnnotationStore`."""
    for item in store.iter_items():
        judgments = [item.judgments.get(p) for p in PERSPECTIVES]
        yield {
            "id": item.item_id,
            "instruction": item.instruction,
            "original": item.original,
            "edited": item.edited,
            "status": item.status,
            "scores": [j.score if j else None for j in judgments],
            "verdicts": [j.verdict if j else None for j in judgments],
            "failure_texts": [j.failure_text if j else None for j in judgments],
            "errors": [(j.error if j else "pending") for j in judgments],
            "error_messages": [j.error_message if j else None for j in judgments],
            "raw_replies": [j.raw_reply if j else None for j in judgments],
            "prompt_ids": [j.prompt_id if j else None for j in judgments],
            "models": [j.model if j else None for j in judgments],
        }


def read_failure_text(text: str | None) -> str:
    """One per-perspective failure text as any format stores it → the `RewardRecord` spelling: ``None``, a blank
    string and the official ``"None"`` all mean "nothing to report" and become ``""``; other texts are stripped."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise TypeError(f"a failure text must be a string or None, got {text!r}")
    text = text.strip()
    return "" if text == NO_FAILURE_PART else text


def official_entries(record: RewardRecord) -> list[dict[str, Any]]:
    """A record as its three official entries (``"None"`` for an empty failure text, the official spelling)."""
    return [
        {OFFICIAL_SCORE_KEY: score, OFFICIAL_TEXT_KEY: text or NO_FAILURE_PART}
        for score, text in zip(record.scores, record.failure_texts)
    ]


def export_store(store_path: str | os.PathLike, export_format: str, output: str | os.PathLike) -> dict[str, int]:
    """Write a store in ``export_format`` to ``output``. Returns ``{"written": n, "incomplete": m}``.

    ``official-json`` holds only complete items (the format has no place for failures); the others hold every item.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"`format` must be one of {EXPORT_FORMATS}, got {export_format!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with AnnotationStore(store_path, readonly=True) as store:
        rows = list(store_rows(store))
    incomplete = sum(row["status"] != "done" for row in rows)
    temporary = output.with_name(output.name + ".tmp")
    if export_format == "official-json":
        data = {
            str(row["id"]): official_entries(record_from_row(row, str(store_path)))
            for row in rows
            if row["status"] == "done"
        }
        temporary.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(temporary, output)
        return {"written": len(data), "incomplete": incomplete}
    if export_format == "jsonl":
        with temporary.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(temporary, output)
    elif export_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows, schema=_arrow_schema()), str(temporary))
        os.replace(temporary, output)
    else:
        import datasets
        import pyarrow as pa

        table = pa.Table.from_pylist(rows, schema=_arrow_schema())
        datasets.Dataset(table).save_to_disk(str(output))
    return {"written": len(rows), "incomplete": incomplete}


def _arrow_schema() -> Any:
    import pyarrow as pa

    text_list = pa.list_(pa.string())
    return pa.schema(
        [
            ("id", pa.string()),
            ("instruction", pa.string()),
            ("original", pa.string()),
            ("edited", pa.string()),
            ("status", pa.string()),
            ("scores", pa.list_(pa.float64())),
            ("verdicts", text_list),
            ("failure_texts", text_list),
            ("errors", text_list),
            ("error_messages", text_list),
            ("raw_replies", text_list),
            ("prompt_ids", text_list),
            ("models", text_list),
        ]
    )


# ------------------------------------------------------------------------------------------------- official JSON
def parse_official_json(data: Any, source: str = "RewardEdit_20K.json") -> dict[str, RewardRecord]:
    """Validate the official ``{key: [{"Score", "Negative Prompt"} ×3]}`` mapping into records."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object {{key: [3 entries]}}, got {type(data).__name__}")
    records: dict[str, RewardRecord] = {}
    for key, entries in data.items():
        if not isinstance(entries, list) or len(entries) != len(PERSPECTIVES):
            raise ValueError(f"{source}: {key!r} must map to a list of 3 entries (following, preserving, quality)")
        scores, texts = [], []
        for perspective, entry in zip(PERSPECTIVES, entries):
            if not isinstance(entry, Mapping) or OFFICIAL_SCORE_KEY not in entry:
                raise ValueError(f"{source}: {key!r} {perspective} entry lacks {OFFICIAL_SCORE_KEY!r}: {entry!r}")
            score = entry[OFFICIAL_SCORE_KEY]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f"{source}: {key!r} {perspective} score must be a number, got {score!r}")
            text = entry.get(OFFICIAL_TEXT_KEY, "")
            if text is not None and not isinstance(text, str):
                raise ValueError(
                    f"{source}: {key!r} {perspective} {OFFICIAL_TEXT_KEY!r} must be a string, got {text!r}"
                )
            scores.append(float(score))
            texts.append(read_failure_text(text))
        try:
            records[str(key)] = RewardRecord(scores=tuple(scores), failure_texts=tuple(texts), item_id=str(key))
        except ValueError as error:
            raise ValueError(f"{source}: {key!r}: {error}") from None
    return records


def read_official_json(path: str | os.PathLike) -> dict[str, RewardRecord]:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_official_json(json.load(handle), str(path))


# ------------------------------------------------------------------------------------------------------ loading
def record_from_row(row: Mapping[str, Any], source: str) -> RewardRecord:
    """The `RewardRecord` of one complete export row (``status == "done"``)."""
    texts = row.get("failure_texts") or [None] * len(PERSPECTIVES)
    try:
        return RewardRecord(
            scores=tuple(row["scores"]),
            failure_texts=tuple(read_failure_text(text) for text in texts),
            item_id=str(row["id"]),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: item {row['id']!r}: {error}") from None


def is_complete_row(row: Mapping[str, Any]) -> bool:
    """Whether an export row has a successful judgment for every perspective."""
    scores = row.get("scores")
    return row.get("status", "done") == "done" and scores is not None and all(score is not None for score in scores)


def check_on_incomplete(on_incomplete: str) -> None:
    if on_incomplete not in ("skip", "error"):
        raise ValueError(f"`on_incomplete` must be 'skip' or 'error', got {on_incomplete!r}")


def report_incomplete(
    source: str | os.PathLike, item_ids: list[str], on_incomplete: str, consequence: str = "have no reward record"
) -> None:
    """The one rule for items without a successful judgment for every perspective: they are left out with a warning
    naming how many and the first ids (``on_incomplete="skip"``), or they stop the reader (``"error"``)."""
    check_on_incomplete(on_incomplete)
    if not item_ids:
        return
    message = (
        f"{source}: {len(item_ids)} item(s) are not judged on all three perspectives and {consequence} (first: "
        f"{item_ids[:5]}); run `reward-edit annotate` again to retry them or `reward-edit export` to see reasons"
    )
    if on_incomplete == "error":
        raise ValueError(message)
    logger.warning(message + "; they are skipped")


def _records_from_rows(rows: Iterator[dict[str, Any]], source: str) -> tuple[dict[str, RewardRecord], list[str]]:
    records: dict[str, RewardRecord] = {}
    incomplete: list[str] = []
    for row in rows:
        if is_complete_row(row):
            records[str(row["id"])] = record_from_row(row, source)
        else:
            incomplete.append(str(row["id"]))
    return records, incomplete


def detect_format(path: str | os.PathLike) -> str:
    """The reward-record format of a path: ``"store"``, ``"official-json"``, ``"jsonl"``, ``"parquet"`` or
    ``"hf-dataset"`` (a folder written by ``Dataset.save_to_disk``). Raises `ValueError` for anything else."""
    path = Path(path)
    if path.is_dir():
        if is_saved_dataset_folder(path):
            return "hf-dataset"
        raise ValueError(f"{path}: a folder must be a saved datasets folder (dataset_info.json)")
    if is_annotation_store(path):
        return "store"
    suffix = path.suffix.lower()
    formats = {".json": "official-json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
    if suffix in formats:
        return formats[suffix]
    raise ValueError(
        f"{path}: unknown reward-record format; use a store, .json (official), .jsonl, .parquet or a datasets folder"
    )


def iter_export_rows(path: str | os.PathLike, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The export rows (see module docstring) of a store, or of its ``jsonl``/``parquet``/``hf-dataset`` export.

    Args:
        path: the store file or the export.
        columns (`list[str]`, *optional*): read only these columns of a parquet or datasets export (all by default).
    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "store":
        with AnnotationStore(path, readonly=True) as store:
            yield from store_rows(store)
    elif kind == "jsonl":
        for _, row in iter_jsonl_objects(path, expected="an export row object"):
            yield row
    elif kind == "parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(str(path), columns=columns).to_pylist()
    elif kind == "hf-dataset":
        import datasets

        dataset = datasets.load_from_disk(str(path))
        yield from dataset.select_columns(columns) if columns else dataset
    else:
        raise ValueError(f"{path}: {kind} holds no export rows (it is read by `read_official_json`)")


def load_reward_records(
    source: str | os.PathLike | Mapping[str, Any], on_incomplete: Literal["skip", "error"] = "skip"
) -> dict[str, RewardRecord]:
    """``{item id: RewardRecord}`` from a store, any export format, or the official JSON (path or loaded dict).

    Args:
        source: a path (format detected from content/suffix) or an already-loaded official JSON mapping.
        on_incomplete (`str`, defaults to ``"skip"``): items with failed or pending perspectives are skipped with a
            warning naming how many (``"skip"``) or raise (``"error"``).
    """
    check_on_incomplete(on_incomplete)
    if isinstance(source, Mapping):
        return parse_official_json(source, "<mapping>")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"reward records not found: {path}")
    kind = detect_format(path)
    if kind == "official-json":
        return read_official_json(path)
    rows = iter_export_rows(path, columns=["id", "status", "scores", "failure_texts"])
    records, incomplete = _records_from_rows(rows, str(path))
    report_incomplete(path, incomplete, on_incomplete)
    return records
