"""Training examples from the data readers of `reward_edit_pipeline.data` (triplets and reward records)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from typing import Any

from .data import SkipCounter, TrainingExample, attach_rewards

logger = logging.getLogger(__name__)


class DatasetImage:
    """One image cell of a `datasets` dataset, read (still encoded) only when a DataLoader worker loads it."""

    __slots__ = ("column", "dataset", "row")

    def __init__(self, dataset: Any, row: int, column: str) -> None:
        self.dataset, self.row, self.column = dataset, row, column

    def read(self) -> Any:
        """`{"bytes": ..., "path": ...}` of the cell (the column is cast to `Image(decode=False)`)."""
        return self.dataset[self.row][self.column]

    def __repr__(self) -> str:
        return f"DatasetImage(row={self.row}, column={self.column!r})"


class LazyImageRows:
    """A `datasets.Dataset` seen by `iter_triplets` with its image columns replaced by `DatasetImage` references, so
    listing 300k triplets reads ids and instructions only, not the images."""

    def __init__(self, dataset: Any) -> None:
        import datasets

        self.column_names = list(dataset.column_names)
        image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
        self._rows = dataset.remove_columns(image_columns) if image_columns else dataset
        self._images = {
            name: dataset.select_columns([name]).cast_column(name, datasets.Image(decode=False))
            for name in image_columns
        }

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index, row in enumerate(self._rows):
            yield {**row, **{name: DatasetImage(images, index, name) for name, images in self._images.items()}}


def _open_triplet_source(args: argparse.Namespace) -> Any:
    if args.train_data_dir is not None:
        return args.train_data_dir
    import datasets

    if os.path.isdir(args.dataset_name):
        dataset = datasets.load_from_disk(args.dataset_name)  # a folder written by `Dataset.save_to_disk`
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"]
    else:
        dataset = datasets.load_dataset(args.dataset_name, split="train")
    return LazyImageRows(dataset)


def load_training_examples(args: argparse.Namespace, skips: SkipCounter) -> list[TrainingExample]:
    """List the triplets (first `--max_train_samples`), joined with their rewards in stage 2.

    Triplets without a reward record are skipped and counted; images are not opened here.
    """
    from reward_edit_pipeline.data import iter_triplets

    examples: list[TrainingExample] = []
    for triplet in iter_triplets(_open_triplet_source(args)):
        examples.append(
            TrainingExample(
                key=triplet.id,
                instruction=triplet.instruction,
                original_image=triplet.original,
                edited_image=triplet.edited,
            )
        )
        if args.max_train_samples is not None and len(examples) >= args.max_train_samples:
            break
    logger.info("found %d training triplets", len(examples))
    if args.stage == 2:
        from reward_edit_pipeline.data import load_reward_records

        records = load_reward_records(args.rewards)
        logger.info("loaded %d reward records from %s", len(records), args.rewards)
        examples = attach_rewards(examples, records, skips)
    return examples
