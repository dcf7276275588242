"""Publish a reward dataset to the Hub as parquet shards with `Image` features and a dataset card.

The pushed layout is the standard one `datasets.load_dataset(repo_id)` reads without custom code::

    README.md                              card: YAML metadata (license, task_categories, size_categories,
                                           dataset_info.features, configs) + the three perspectives explained
    data/train-00000-of-0000N.parquet      rows, image bytes embedded

Columns (perspective order following, preserving, quality): ``id``, ``instruction``, ``original`` (Image),
``edited`` (Image), ``following_score``, ``following_failure``, ``preserving_score``, ``preserving_failure``,
``quality_score``, ``quality_failure`` (scores float32 in [0, 5], failure texts ``""`` when there is nothing to
report), ``judge_model``, ``prompt_id``. ``id``/``instruction``/``original``/``edited`` are the triplet columns
`reward_edit_pipeline.data.iter_triplets` reads from a `datasets.Dataset`, so training takes the pushed repo as
``--dataset_name``; `reward_records_from_dataset` gives its rewards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._common import PushResult, prepare_staging_folder, resolve_token, upload_staged_folder
from .dataset_layout import COLUMNS, FAILURE_COLUMNS, SCORE_COLUMNS, RewardRow, dataset_features
from .sources import rows_from_path

__all__ = [
    "COLUMNS",
    "FAILURE_COLUMNS",
    "SCORE_COLUMNS",
    "RewardRow",
    "build_dataset_card",
    "dataset_features",
    "iter_source_rows",
    "push_dataset",
    "stage_dataset_folder",
    "write_parquet_shards",
]

DATA_DIR = "data"
SPLIT = "train"
DEFAULT_DATASET_LICENSE = "cc-by-4.0"
DEFAULT_MAX_SHARD_BYTES = 500 * 1024 * 1024


def size_category(num_rows: int) -> str:
    """The Hub's ``size_categories`` bucket for `num_rows`."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_rows < limit:
            return label
    return "1M<n<10M"


_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ pretty_name }}

Instruction-based image editing triplets (instruction, original image, edited image) graded by a vision-language
judge from three perspectives, in the format of *Multi-Reward as Condition for Instruction-based Image Editing*
(Gu et al., ICLR 2025, [arXiv:2411.04713](https://arxiv.org/abs/2411.04713)). The rewards serve as training
conditions for a reward-conditioned InstructPix2Pix model.

- **{{ num_rows }}** rows, split `train`, {{ num_shards }} parquet shard(s) under `data/`.
- Judge model(s): {{ judge_models }}. Prompt set(s): {{ prompt_ids }}.

## The three perspectives

| perspective | score column | failure column | what the judge checks |
| --- | --- | --- | --- |
| instruction following | `following_score` | `following_failure` | does the edit do what the instruction asks? |
| detail preserving | `preserving_score` | `preserving_failure` | are the parts the instruction did not ask to change left unchanged? |
| generation quality | `quality_score` | `quality_failure` | is the edited image natural and free of artifacts? |

**Score scale**: each score is a number from 0 (fails completely) to 5 (perfect), higher is better. A failure
column holds the judge's short description of what went wrong from that perspective, or an empty string when
there is nothing to report. Models trained on this data receive the three failure texts joined with `"; "`
(empty ones written `None`), so "no failure at all" is `None; None; None`.

## Loading

```python
from datasets import load_dataset

dataset = load_dataset("{{ repo_id }}", split="train")
row = dataset[0]
row["instruction"], row["original"], row["edited"]  # PIL images
row["following_score"], row["following_failure"]
```

Train a reward-conditioned model on it with `reward-edit train` (package `reward-edit-pipeline`).

## Columns

| column | type |
| --- | --- |
{{ columns_table }}
"""


def build_dataset_card(
    repo_id: str,
    rows_summary: Mapping[str, Any],
    *,
    license: str = DEFAULT_DATASET_LICENSE,  # noqa: A002
    pretty_name: str | None = None,
    tags: Iterable[str] = (),
):
    """Build the `huggingface_hub.DatasetCard` (deterministic for the same rows and arguments)."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    features = dataset_features()
    num_rows = int(rows_summary["num_rows"])
    card_data = DatasetCardData(
        license=license,
        task_categories=["image-to-image"],
        size_categories=[size_category(num_rows)],
        pretty_name=pretty_name or repo_id.split("/")[-1],
        tags=list(dict.fromkeys(["image-editing", "reward-model", "instruct-pix2pix", "multi-reward", *tags])),
        configs=[{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}],
    )
    info = DatasetInfo(features=features)
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    columns_table = "\n".join(f"| `{name}` | {_feature_text(feature)} |" for name, feature in features.items())
    return DatasetCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        pretty_name=pretty_name or repo_id.split("/")[-1],
        repo_id=repo_id,
        num_rows=num_rows,
        num_shards=int(rows_summary["num_shards"]),
        judge_models=", ".join(f"`{m}`" for m in rows_summary["judge_models"]) or "not recorded",
        prompt_ids=", ".join(f"`{p}`" for p in rows_summary["prompt_ids"]) or "not recorded",
        columns_table=columns_table,
    )


def _feature_text(feature: Any) -> str:
    return type(feature).__name__ if not hasattr(feature, "dtype") else feature.dtype


def write_parquet_shards(
    rows: Iterable[RewardRow], out_dir: Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> dict[str, Any]:
    """Write `rows` as ``data/train-XXXXX-of-YYYYY.parquet`` under `out_dir`; returns a summary for the card.

    A shard is closed once its image bytes reach `max_shard_bytes`. Keys must be unique.
    """
    from datasets import Dataset

    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"`max_shard_bytes` must be a positive integer, got {max_shard_bytes!r}")
    features = dataset_features()
    data_dir = out_dir / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    shard_files: list[Path] = []
    seen_keys: set[str] = set()
    judge_models: set[str] = set()
    prompt_ids: set[str] = set()
    num_rows = 0

    def flush(batch: list[dict[str, Any]]) -> None:
        path = data_dir / f"shard-{len(shard_files):05d}.parquet"
        Dataset.from_list(batch, features=features).to_parquet(str(path))
        shard_files.append(path)

    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    for row in rows:
        if row.item_id in seen_keys:
            raise ValueError(f"duplicate row id {row.item_id!r}: every triplet must appear once")
        seen_keys.add(row.item_id)
        judge_models.add(row.judge_model)
        prompt_ids.add(row.prompt_id)
        batch.append(row.to_example())
        batch_bytes += len(row.original_image) + len(row.edited_image)
        num_rows += 1
        if batch_bytes >= max_shard_bytes:
            flush(batch)
            batch, batch_bytes = [], 0
    if batch:
        flush(batch)
    if num_rows == 0:
        raise ValueError("the source holds no rows to publish")
    total = len(shard_files)
    for index, path in enumerate(shard_files):
        path.rename(data_dir / f"{SPLIT}-{index:05d}-of-{total:05d}.parquet")
    return {
        "num_rows": num_rows,
        "num_shards": total,
        "judge_models": sorted(m for m in judge_models if m),
        "prompt_ids": sorted(p for p in prompt_ids if p),
    }


def stage_dataset_folder(
    rows: Iterable[RewardRow],
    repo_id: str,
    staging_dir: str | Path,
    *,
    license: str = DEFAULT_DATASET_LICENSE,  # noqa: A002
    pretty_name: str | None = None,
    tags: Iterable[str] = (),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write into `staging_dir` exactly what `push_dataset` uploads (parquet shards + README.md)."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`repo_id` must look like 'namespace/name', got {repo_id!r}")
    staged = prepare_staging_folder(Path(staging_dir), overwrite=overwrite)
    summary = write_parquet_shards(rows, staged, max_shard_bytes=max_shard_bytes)
    card = build_dataset_card(repo_id, summary, license=license, pretty_name=pretty_name, tags=tags)
    (staged / "README.md").write_text(str(card), encoding="utf-8")
    return staged


def iter_source_rows(
    source: str | Path | Iterable[RewardRow], *, triplets: Any = None, on_incomplete: str = "skip"
) -> Iterator[RewardRow]:
    """Rows from an annotation store, an export, a folder of pushed shards, or an iterable of `RewardRow`."""
    if not isinstance(source, (str, Path)):
        yield from source
        return
    yield from rows_from_path(Path(source), triplets=triplets, on_incomplete=on_incomplete)


def push_dataset(
    source: str | Path | Iterable[RewardRow],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    license: str = DEFAULT_DATASET_LICENSE,  # noqa: A002
    pretty_name: str | None = None,
    tags: Iterable[str] = (),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    triplets: Any = None,
    on_incomplete: str = "skip",
    dry_run: bool = False,
    dry_run_dir: str | Path | None = None,
    overwrite: bool = False,
) -> PushResult:
    """Upload a reward dataset to the dataset repo `repo_id` (created if missing) in one commit.

    `source` is an annotation store, an export of one (jsonl / parquet / `save_to_disk` folder), a folder of pushed
    shards, or `RewardRow`s. `triplets` (an `iter_triplets` source) supplies images and instructions the source lacks;
    items not judged on all perspectives are skipped with a warning (`on_incomplete="error"` raises). Stale shards
    under ``data/`` are deleted in the same commit; unchanged content makes no commit. With `dry_run`, only
    `dry_run_dir` is written (no token, no network).
    """
    card_kwargs = {
        "license": license,
        "pretty_name": pretty_name,
        "tags": tuple(tags),
        "max_shard_bytes": max_shard_bytes,
    }
    rows = iter_source_rows(source, triplets=triplets, on_incomplete=on_incomplete)
    if dry_run:
        if dry_run_dir is None:
            raise ValueError("`dry_run_dir` is required with `dry_run=True` (the folder that would be uploaded)")
        staged = stage_dataset_folder(rows, repo_id, dry_run_dir, overwrite=overwrite, **card_kwargs)
        return PushResult(repo_id, "dataset", revision or "main", None, None, False, staged_folder=staged)
    resolved_token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="reward-edit-dataset-") as tmp:
        staged = stage_dataset_folder(rows, repo_id, Path(tmp) / "upload", **card_kwargs)
        return upload_staged_folder(
            staged,
            repo_id,
            repo_type="dataset",
            token=resolved_token,
            private=private,
            revision=revision,
            commit_message=commit_message or "Upload reward dataset",
            delete_patterns=[f"{DATA_DIR}/*"],
        )
