"""Readers between on-disk reward data and the pushed dataset layout.

`rows_from_path` turns a source into `RewardRow`s for `push_dataset`:

- an annotation store (SQLite, ``reward-edit annotate`` / ``import-official``), read through
  `reward_edit_pipeline.data.store_rows`;
- an export of one (``reward-edit export`` as ``jsonl``, ``parquet`` or ``hf-dataset``), same rows;
- a folder of parquet files already in the pushed layout (a ``--dry-run`` folder or a downloaded dataset repo).

Store and export rows reference images by path; a relative path is resolved against the folder holding the source
(for a ``save_to_disk`` export: the export folder, then its parent), then the working directory. Rows without images (the official annotations carry none) take them, and the instruction, from
`triplets` (any `reward_edit_pipeline.data.iter_triplets` source, e.g. the InstructPix2Pix clip-filtered folder).
Items that are not judged on all three perspectives cannot be published; they are counted and skipped (or raise
with ``on_incomplete="error"``), like `load_reward_records` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from reward_edit_pipeline.rewards import PERSPECTIVES

from .dataset_layout import COLUMNS, FAILURE_COLUMNS, SCORE_COLUMNS, RewardRow

logger = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
OFFICIAL_EMPTY_TEXT = "None"  # the official files write "None" for "nothing to report"


def _normalise_failure_text(text: Any) -> str:
    """Failure texts are published as ``""`` when there is nothing to report (store: None/"", official: "None")."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise TypeError(f"a failure text must be a string or None, got {text!r}")
    text = text.strip()
    return "" if text == OFFICIAL_EMPTY_TEXT else text


def _single_label(values: list[Any]) -> str:
    """One label for the row: the shared value, or the distinct per-perspective values joined with ', '."""
    distinct = list(dict.fromkeys(str(v) for v in values if v not in (None, "")))
    return ", ".join(distinct)


def _read_image(reference: Any, base_dirs: list[Path], item_id: str, which: str) -> tuple[bytes, str]:
    if isinstance(reference, (bytes, bytearray)):
        return bytes(reference), f"{item_id}_{which}"
    if isinstance(reference, Mapping):  # an undecoded datasets Image {"bytes", "path"}
        if reference.get("bytes"):
            return bytes(reference["bytes"]), Path(reference.get("path") or f"{item_id}_{which}").name
        reference = reference.get("path")
    if hasattr(reference, "save") and hasattr(reference, "format"):  # an in-memory PIL image: encode losslessly
        import io

        buffer = io.BytesIO()
        reference.save(buffer, format="PNG")
        return buffer.getvalue(), f"{item_id}_{which}.png"
    if not isinstance(reference, (str, os.PathLike)) or not str(reference):
        raise ValueError(f"item {item_id!r}: no {which} image (pass `triplets` to supply the images)")
    path = Path(reference)
    candidates = [path] if path.is_absolute() else [base / path for base in base_dirs] + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_bytes(), candidate.name
    raise FileNotFoundError(
        f"item {item_id!r}: {which} image {str(reference)!r} not found (looked in {[str(c) for c in candidates]})"
    )


def _export_rows(source: Path) -> tuple[Iterator[dict[str, Any]], Path]:
    """Rows of a store or of an export (jsonl / parquet / hf-dataset) and the folder relative paths start from."""
    if source.is_file():
        with source.open("rb") as handle:
            is_store = handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        if is_store:
            from reward_edit_pipeline.data import store_rows
            from reward_edit_pipeline.judge.store import AnnotationStore

            def store_iterator() -> Iterator[dict[str, Any]]:
                with AnnotationStore(source, readonly=True) as store:
                    yield from store_rows(store)

            return store_iterator(), source.parent
        if source.suffix.lower() in (".jsonl", ".ndjson"):
            import json

            def jsonl_iterator() -> Iterator[dict[str, Any]]:
                with source.open(encoding="utf-8") as handle:
                    for line in handle:
                        if line.strip():
                            yield json.loads(line)

            return jsonl_iterator(), source.parent
        if source.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return iter(pq.read_table(source).to_pylist()), source.parent
        raise ValueError(
            f"`source` {source}: unknown format; expected an annotation store, an export (.jsonl, .parquet, "
            "a `save_to_disk` folder) or a folder of pushed parquet shards"
        )
    import datasets

    return iter(datasets.load_from_disk(str(source))), source


def rows_from_export(
    source: Path,
    *,
    triplets: Any = None,
    on_incomplete: Literal["skip", "error"] = "skip",
) -> Iterator[RewardRow]:
    """`RewardRow`s of an annotation store or of its export (see module docstring)."""
    if on_incomplete not in ("skip", "error"):
        raise ValueError(f"`on_incomplete` must be 'skip' or 'error', got {on_incomplete!r}")
    by_id: dict[str, Any] = {}
    if triplets is not None:
        from reward_edit_pipeline.data import iter_triplets

        by_id = {triplet.id: triplet for triplet in iter_triplets(triplets)}
    rows, base_dir = _export_rows(source)
    base_dirs = [base_dir, base_dir.parent] if source.is_dir() else [base_dir]
    incomplete: list[str] = []
    for row in rows:
        item_id = str(row["id"])
        scores = row.get("scores") or [None] * len(PERSPECTIVES)
        if row.get("status", "done") != "done" or any(score is None for score in scores):
            incomplete.append(item_id)
            continue
        triplet = by_id.get(item_id)
        original = row.get("original") or (triplet.original if triplet else None)
        edited = row.get("edited") or (triplet.edited if triplet else None)
        instruction = row.get("instruction") or (triplet.instruction if triplet else None)
        if instruction is None:
            raise ValueError(f"item {item_id!r} has no instruction (pass `triplets` to supply it)")
        original_bytes, original_name = _read_image(original, base_dirs, item_id, "original")
        edited_bytes, edited_name = _read_image(edited, base_dirs, item_id, "edited")
        texts = row.get("failure_texts") or [None] * len(PERSPECTIVES)
        yield RewardRow(
            item_id=item_id,
            instruction=instruction,
            original_image=original_bytes,
            original_filename=original_name,
            edited_image=edited_bytes,
            edited_filename=edited_name,
            scores=tuple(float(score) for score in scores),
            failure_texts=tuple(_normalise_failure_text(text) for text in texts),
            judge_model=_single_label(row.get("models") or []),
            prompt_id=_single_label(row.get("prompt_ids") or []),
        )
    if incomplete:
        message = (
            f"{source}: {len(incomplete)} item(s) are not judged on all three perspectives and cannot be published "
            f"(first: {incomplete[:5]}); run `reward-edit annotate` again to complete them"
        )
        if on_incomplete == "error":
            raise ValueError(message)
        logger.warning(message + "; they are skipped")


def rows_from_pushed_parquet(folder: Path) -> Iterator[RewardRow]:
    """Rows of parquet files already in the pushed layout (a ``--dry-run`` folder or a downloaded repo)."""
    import pyarrow.parquet as pq

    for path in sorted(folder.rglob("*.parquet")):
        table = pq.read_table(path)
        missing = [column for column in COLUMNS if column not in table.column_names]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing} of a pushed reward dataset")
        for record in table.to_pylist():
            yield RewardRow(
                item_id=record["id"],
                instruction=record["instruction"],
                original_image=record["original"]["bytes"],
                original_filename=record["original"]["path"] or f"{record['id']}_original",
                edited_image=record["edited"]["bytes"],
                edited_filename=record["edited"]["path"] or f"{record['id']}_edited",
                scores=tuple(float(record[c]) for c in SCORE_COLUMNS),
                failure_texts=tuple(record[c] for c in FAILURE_COLUMNS),
                judge_model=record["judge_model"],
                prompt_id=record["prompt_id"],
            )


def rows_from_path(
    source: Path, *, triplets: Any = None, on_incomplete: Literal["skip", "error"] = "skip"
) -> Iterator[RewardRow]:
    """Dispatch on what `source` is (see module docstring)."""
    if not source.exists():
        raise FileNotFoundError(f"`source` {source} does not exist")
    is_saved_dataset = (source / "dataset_info.json").is_file() or (source / "state.json").is_file()
    if source.is_dir() and not is_saved_dataset:
        if not any(source.rglob("*.parquet")):
            raise ValueError(
                f"`source` {source} is a folder but neither a `save_to_disk` export nor a folder of pushed parquet shards"
            )
        yield from rows_from_pushed_parquet(source)
        return
    yield from rows_from_export(source, triplets=triplets, on_incomplete=on_incomplete)


def reward_records_from_dataset(dataset: Any) -> dict[str, Any]:
    """``{id: RewardRecord}`` of a pushed reward dataset (a `datasets.Dataset`, e.g. ``load_dataset(repo_id)``).

    The records are what `reward_edit_pipeline.data.load_reward_records` returns for the store it was pushed from.
    """
    from reward_edit_pipeline.data import RewardRecord

    missing = [column for column in ("id", *SCORE_COLUMNS, *FAILURE_COLUMNS) if column not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset lacks the reward columns {missing}")
    table = dataset.select_columns(["id", *SCORE_COLUMNS, *FAILURE_COLUMNS])
    records = {}
    for row in table:
        scores = tuple(float(row[c]) for c in SCORE_COLUMNS)
        records[str(row["id"])] = RewardRecord(scores, tuple(row[c] for c in FAILURE_COLUMNS))
    return records
