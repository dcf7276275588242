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

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from reward_edit_pipeline.records import RewardRecord

from .dataset_layout import COLUMNS, FAILURE_COLUMNS, SCORE_COLUMNS, RewardRow


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
    from reward_edit_pipeline.data import detect_format, iter_export_rows

    try:
        kind = detect_format(source)
    except ValueError:
        kind = None
    if kind not in ("store", "jsonl", "parquet", "hf-dataset"):
        raise ValueError(
            f"`source` {source}: unknown format; expected an annotation store, an export (.jsonl, .parquet, "
            "a `save_to_disk` folder) or a folder of pushed parquet shards"
        )
    return iter_export_rows(source), source if source.is_dir() else source.parent


def rows_from_export(
    source: Path,
    *,
    triplets: Any = None,
    on_incomplete: Literal["skip", "error"] = "skip",
) -> Iterator[RewardRow]:
    """`RewardRow`s of an annotation store or of its export (see module docstring)."""
    from reward_edit_pipeline.data import check_on_incomplete, is_complete_row, record_from_row, report_incomplete

    check_on_incomplete(on_incomplete)

    by_id: dict[str, Any] = {}
    if triplets is not None:
        from reward_edit_pipeline.data import iter_triplets

        by_id = {triplet.id: triplet for triplet in iter_triplets(triplets)}
    rows, base_dir = _export_rows(source)
    base_dirs = [base_dir, base_dir.parent] if source.is_dir() else [base_dir]
    incomplete: list[str] = []
    for row in rows:
        item_id = str(row["id"])
        if not is_complete_row(row):
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
        yield RewardRow(
            reward=record_from_row(row, str(source)),
            instruction=instruction,
            original_image=original_bytes,
            original_filename=original_name,
            edited_image=edited_bytes,
            edited_filename=edited_name,
            judge_model=_single_label(row.get("models") or []),
            prompt_id=_single_label(row.get("prompt_ids") or []),
        )
    report_incomplete(source, incomplete, on_incomplete, consequence="cannot be published")


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
                reward=_pushed_record(record),
                instruction=record["instruction"],
                original_image=record["original"]["bytes"],
                original_filename=record["original"]["path"] or f"{record['id']}_original",
                edited_image=record["edited"]["bytes"],
                edited_filename=record["edited"]["path"] or f"{record['id']}_edited",
                judge_model=record["judge_model"],
                prompt_id=record["prompt_id"],
            )


def rows_from_path(
    source: Path, *, triplets: Any = None, on_incomplete: Literal["skip", "error"] = "skip"
) -> Iterator[RewardRow]:
    """Dispatch on what `source` is (see module docstring)."""
    if not source.exists():
        raise FileNotFoundError(f"`source` {source} does not exist")
    from reward_edit_pipeline.data import is_saved_dataset_folder

    if source.is_dir() and not is_saved_dataset_folder(source):
        if not any(source.rglob("*.parquet")):
            raise ValueError(
                f"`source` {source} is a folder but neither a `save_to_disk` export nor a folder of pushed parquet shards"
            )
        yield from rows_from_pushed_parquet(source)
        return
    yield from rows_from_export(source, triplets=triplets, on_incomplete=on_incomplete)


def _pushed_record(row: Mapping[str, Any]) -> RewardRecord:
    """The `RewardRecord` of one row in the pushed layout (``<perspective>_score`` / ``<perspective>_failure``)."""
    from reward_edit_pipeline.data import read_failure_text

    return RewardRecord(
        scores=tuple(float(row[column]) for column in SCORE_COLUMNS),
        failure_texts=tuple(read_failure_text(row[column]) for column in FAILURE_COLUMNS),
        item_id=str(row["id"]),
    )


def reward_records_from_dataset(dataset: Any) -> dict[str, RewardRecord]:
    """``{id: RewardRecord}`` of a pushed reward dataset (a `datasets.Dataset`, e.g. ``load_dataset(repo_id)``).

    The records are what `reward_edit_pipeline.data.load_reward_records` returns for the store it was pushed from.
    """
    missing = [column for column in ("id", *SCORE_COLUMNS, *FAILURE_COLUMNS) if column not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset lacks the reward columns {missing}")
    return {
        str(row["id"]): _pushed_record(row) for row in dataset.select_columns(["id", *SCORE_COLUMNS, *FAILURE_COLUMNS])
    }
