"""Training data: bad samples are skipped and counted (never replaced), sampling, latent cache round trip."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from reward_edit_pipeline.train.data import (
    EpochShuffleSampler,
    SkipCounter,
    TrainingExample,
    TripletDataset,
    attach_rewards,
    collate_training_batch,
)
from reward_edit_pipeline.train.sources import load_training_examples
from torch.utils.data import DataLoader
from training_data import write_official_rewards, write_triplet_folder

from reward_edit_pipeline.records import RewardRecord
from reward_edit_pipeline.testing import get_dummy_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def reward(scores: tuple[float, float, float], failure_texts: tuple[str, str, str]) -> RewardRecord:
    return RewardRecord(scores=scores, failure_texts=failure_texts)


def _examples(tmp_path: Path) -> list[TrainingExample]:
    rng = np.random.default_rng(0)
    paths = {}
    for name, size in (("good", 40), ("other", 40), ("small", 24)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths[name] = path
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    return [
        TrainingExample("ok", "make it red", paths["good"], paths["other"], reward((5.0, 4.0, 3.0), ("", "", ""))),
        TrainingExample("corrupt", "x", paths["good"], corrupt, reward((1.0, 1.0, 1.0), ("a", "b", "c"))),
        TrainingExample("missing", "x", tmp_path / "nope.png", paths["good"], reward((1.0, 1.0, 1.0), ("a", "b", "c"))),
        TrainingExample("mismatch", "x", paths["good"], paths["small"], reward((1.0, 1.0, 1.0), ("a", "b", "c"))),
        TrainingExample("truncated", "x", paths["good"], truncated, reward((1.0, 1.0, 1.0), ("a", "b", "c"))),
        TrainingExample(
            "bytes",
            "make it blue",
            paths["good"].read_bytes(),
            paths["other"],
            reward((2.0, 2.0, 2.0), ("x", "y", "z")),
        ),
    ]


def test_bad_images_are_skipped_and_counted_through_dataloader_workers(tmp_path):
    dataset = TripletDataset(_examples(tmp_path), get_dummy_tokenizer(), resolution=32, with_rewards=True)
    loader = DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate_training_batch)
    skips, kept = SkipCounter(), []
    for batch in loader:
        for skipped in batch["skipped"]:
            skips.add(skipped.reason, skipped.key, skipped.detail)
        if batch["batch_size"]:
            kept.extend(batch["index"].tolist())
            assert batch["original_pixel_values"].shape == (batch["batch_size"], 3, 32, 32)
            assert batch["edited_pixel_values"].abs().max() <= 1.0
            assert batch["failure_text_index"].dtype == torch.long
    assert kept == [0, 5]  # nothing replaced: the batch shrank
    assert skips.counts == {"unreadable_image": 2, "missing_image": 1, "size_mismatch": 1}
    assert skips.total == 4 and skips.examples["unreadable_image"] == ["corrupt", "truncated"]


def test_an_all_skipped_batch_collates_to_size_zero(tmp_path):
    examples = _examples(tmp_path)
    dataset = TripletDataset([examples[1], examples[2]], get_dummy_tokenizer(), resolution=32, with_rewards=False)
    batch = collate_training_batch([dataset[0], dataset[1]])
    assert batch["batch_size"] == 0 and [s.reason for s in batch["skipped"]] == ["unreadable_image", "missing_image"]


def test_triplets_without_reward_records_are_skipped_and_counted(tmp_path):
    keys = write_triplet_folder(tmp_path / "data", 4)
    write_official_rewards(tmp_path / "rewards.json", keys[:3])
    args = SimpleNamespace(
        train_data_dir=str(tmp_path / "data"), dataset_name=None, max_train_samples=None, stage=2,
        rewards=str(tmp_path / "rewards.json"),
    )  # fmt: skip
    skips = SkipCounter()
    examples = load_training_examples(args, skips)
    assert [example.key for example in examples] == keys[:3]
    assert skips.counts == {"missing_reward": 1} and skips.examples["missing_reward"] == [keys[3]]
    official = json.loads((tmp_path / "rewards.json").read_text())
    first = examples[0]
    assert first.reward_scores == tuple(float(entry["Score"]) for entry in official[keys[0]])
    texts = [entry["Negative Prompt"] or "None" for entry in official[keys[0]]]
    assert first.failure_text == "; ".join(texts)  # following; preserving; quality


def test_attach_rewards_gives_each_example_its_record_and_takes_only_reward_records():
    example = TrainingExample("k", "x", "o.png", "e.png")
    record = RewardRecord(scores=(5.0, 4.0, 1.0), failure_texts=("a", "", "c"), item_id="k")
    (joined,) = attach_rewards([example], {"k": record}, SkipCounter())
    assert joined.reward is record and joined.reward_scores == (5.0, 4.0, 1.0) and joined.failure_text == "a; None; c"
    assert example.reward is None and example.failure_text is None  # the input example is left as it was
    with pytest.raises(ValueError, match=r"preserving score must be a finite number in \[0, 5\]"):
        RewardRecord(scores=(5.0, 6.0, 1.0), failure_texts=("a", "", ""))  # out-of-range rewards never get this far
    untyped = SimpleNamespace(scores=(5.0, 5.0, 1.0), failure_texts=("a", "", ""))
    with pytest.raises(TypeError, match="must be a RewardRecord, got SimpleNamespace"):
        attach_rewards([example], {"k": untyped}, SkipCounter())


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    first, second = EpochShuffleSampler(10, seed=3), EpochShuffleSampler(10, seed=3)
    assert list(first) == list(second) and sorted(first) == list(range(10))
    second.set_epoch(1)
    assert list(first) != list(second)
    first.set_epoch(1)
    assert list(first) == list(second)


def test_latent_cache_rows_equal_direct_encoding(tmp_path):
    from reward_edit_pipeline.train.cache import CachedLatentDataset, build_latent_cache, encode_failure_text_table
    from reward_edit_pipeline.train.data import tokenize

    from reward_edit_pipeline.testing import get_dummy_components

    components = get_dummy_components(seed=0)
    examples = [example for example in _examples(tmp_path) if example.key in ("ok", "corrupt", "bytes")]
    dataset = TripletDataset(examples, components["tokenizer"], resolution=32, with_rewards=True)
    assert dataset.failure_texts == ["None; None; None", "a; b; c", "x; y; z"]
    accelerator = SimpleNamespace(
        is_main_process=True, process_index=0, num_processes=1, wait_for_everyone=lambda: None
    )
    vae, text_encoder, tokenizer = components["vae"], components["text_encoder"], components["tokenizer"]
    table = encode_failure_text_table(text_encoder, tokenizer, dataset.failure_texts)
    cache_dir = str(tmp_path / "cache")
    index = build_latent_cache(accelerator, cache_dir, "fp", dataset, vae, text_encoder, True, 2, 0, table)
    assert [entry["key"] for entry in index["skipped"]] == ["corrupt"]
    cached = CachedLatentDataset(cache_dir, index)
    assert len(cached) == 2 and cached.example_indices == [0, 2]
    row = cached[1]
    item = dataset[2]
    with torch.no_grad():
        distribution = vae.encode(item["edited_pixel_values"][None].flip(-1)).latent_dist
        pooled = text_encoder(tokenize(tokenizer, ["x; y; z"]))[1]
    torch.testing.assert_close(row["edited_latent_mean_flipped"], distribution.mean[0])
    torch.testing.assert_close(row["edited_latent_std_flipped"], distribution.std[0])
    torch.testing.assert_close(row["failure_text_embeds"], pooled[0], atol=1e-5, rtol=1e-5)
    assert row["prompt_embeds"].shape == (77, 32) and row["reward_scores"].tolist() == [2.0, 2.0, 2.0]
    # a second build with the same fingerprint reuses the shards
    assert build_latent_cache(accelerator, cache_dir, "fp", dataset, vae, text_encoder, True, 2, 0, table) == index


def test_a_saved_datasets_folder_is_read_through_dataset_name(tmp_path):
    import datasets

    keys = write_triplet_folder(tmp_path / "data", 3)
    rows = {
        "id": keys,
        "original": [str(tmp_path / "data" / key / f"{1000 + n}_0.jpg") for n, key in enumerate(keys)],
        "edited": [str(tmp_path / "data" / key / f"{1000 + n}_1.jpg") for n, key in enumerate(keys)],
        "instruction": ["a", "b", "c"],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    args = SimpleNamespace(
        train_data_dir=None, dataset_name=str(tmp_path / "saved"), max_train_samples=2, stage=1, rewards=None
    )
    examples = load_training_examples(args, SkipCounter())
    assert [(e.key, e.instruction) for e in examples] == [(keys[0], "a"), (keys[1], "b")]
    item = TripletDataset(examples, get_dummy_tokenizer(), resolution=16, with_rewards=False)[1]
    # the 32x32 JPEG of the second row, resized by PIL to 16x16 (square: no crop) and scaled to [-1, 1]
    expected = Image.open(rows["original"][1]).convert("RGB").resize((16, 16), Image.Resampling.LANCZOS)
    expected = torch.from_numpy(np.asarray(expected, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    torch.testing.assert_close(item["original_pixel_values"], expected)


def test_failure_text_encoding_matches_the_pipeline_encoding():
    from reward_edit_pipeline.train.cache import encode_failure_text_table

    from reward_edit_pipeline.testing import make_dummy_pipeline

    pipe = make_dummy_pipeline(seed=0)
    texts = ["None; None; None", "the hat is still red; the face changed; slightly blurry", "x"]
    with torch.no_grad():
        expected = pipe.encode_failure_text(texts)
        # independent computation: the pooled output of the text encoder on max-length padded token ids
        ids = pipe.tokenizer(
            texts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        independent = pipe.text_encoder(ids)[1]
    torch.testing.assert_close(expected, independent)
    table = encode_failure_text_table(pipe.text_encoder, pipe.tokenizer, texts, batch_size=2)
    assert torch.equal(table, expected)  # one encoder: training and inference cannot drift


def test_dataset_image_columns_are_read_lazily_in_workers_and_bad_ones_counted(tmp_path):
    import datasets

    keys = write_triplet_folder(tmp_path / "data", 3)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    originals = [str(tmp_path / "data" / key / f"{1000 + n}_0.jpg") for n, key in enumerate(keys)]
    edited = [str(tmp_path / "data" / key / f"{1000 + n}_1.jpg") for n, key in enumerate(keys)]
    edited[2] = str(corrupt)
    dataset = (
        datasets.Dataset.from_dict(
            {"original_image": originals, "edited_image": edited, "edit_prompt": ["a", "b", "c"]}
        )
        .cast_column("original_image", datasets.Image())
        .cast_column("edited_image", datasets.Image(decode=False))
    )
    dataset = dataset.cast_column("edited_image", datasets.Image())  # stored as bytes, decoded on access
    dataset.save_to_disk(str(tmp_path / "saved"))
    args = SimpleNamespace(
        train_data_dir=None, dataset_name=str(tmp_path / "saved"), max_train_samples=None, stage=1, rewards=None
    )
    examples = load_training_examples(args, SkipCounter())
    assert [e.key for e in examples] == ["0", "1", "2"] and "DatasetImage" in repr(examples[0].original_image)
    loader = DataLoader(
        TripletDataset(examples, get_dummy_tokenizer(), resolution=16, with_rewards=False),
        batch_size=3,
        num_workers=1,
        collate_fn=collate_training_batch,
    )
    batch = next(iter(loader))
    assert batch["batch_size"] == 2 and [(s.key, s.reason) for s in batch["skipped"]] == [("2", "unreadable_image")]
