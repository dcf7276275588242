"""Training examples from the data readers of `reward_edit_pipeline.data` (triplets and reward records)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .data import SkipCounter, TrainingExample, attach_rewards

logger = logging.getLogger(__name__)


def _open_triplet_source(args: argparse.Namespace) -> Any:
    if args.train_data_dir is not None:
        return args.train_data_dir
    import os

    if os.path.isdir(args.dataset_name):
        return args.dataset_name  # a folder written by `Dataset.save_to_disk`
    import datasets

    return datasets.load_dataset(args.dataset_name, split="train", revision=None)


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
