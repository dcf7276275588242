"""Readers that turn a dataset source on disk into `RewardRow`s for `push_dataset`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .push_dataset import COLUMNS, FAILURE_COLUMNS, SCORE_COLUMNS, RewardRow


def rows_from_canonical_parquet(folder: Path) -> Iterator[RewardRow]:
    """Rows of parquet files that already have the pushed columns (a `--dry-run` folder or a downloaded repo)."""
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    for path in files:
        table = pq.read_table(path)
        missing = [column for column in COLUMNS if column not in table.column_names]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing} of a reward dataset")
        for record in table.to_pylist():
            yield RewardRow(
                key=record["key"],
                instruction=record["instruction"],
                original_image=record["original_image"]["bytes"],
                original_filename=record["original_image"]["path"] or f"{record['key']}_original",
                edited_image=record["edited_image"]["bytes"],
                edited_filename=record["edited_image"]["path"] or f"{record['key']}_edited",
                scores=tuple(float(record[c]) for c in SCORE_COLUMNS),
                failure_texts=tuple(record[c] for c in FAILURE_COLUMNS),
                judge_model=record["judge_model"],
                prompt_id=record["prompt_id"],
            )


def rows_from_path(source: Path) -> Iterator[RewardRow]:
    """Dispatch on what `source` is."""
    if not source.exists():
        raise FileNotFoundError(f"`source` {source} does not exist")
    if source.is_dir() and any(source.rglob("*.parquet")):
        yield from rows_from_canonical_parquet(source)
        return
    raise ValueError(f"`source` {source} is neither an annotation store nor an exported reward dataset")
