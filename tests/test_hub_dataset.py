"""Dataset publishing: parquet shards with Image features + card, through a loopback Hub and `datasets.load_dataset`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from reward_edit_pipeline.hub.push_dataset import (
    COLUMNS,
    RewardRow,
    push_dataset,
    stage_dataset_folder,
)

from reward_edit_pipeline.records import RewardRecord


def _image_bytes(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def make_rows(count: int = 5) -> list[RewardRow]:
    rows = []
    for index in range(count):
        rows.append(
            RewardRow(
                reward=RewardRecord(
                    item_id=f"triplet-{index:03d}",
                    scores=(5.0 - index % 6, 2.5, float(index % 4)),
                    failure_texts=("" if index % 2 else "the sky is still blue", "", "blurry clouds"),
                ),
                instruction=f"make the sky number {index} purple",
                original_image=_image_bytes(2 * index, "PNG"),
                original_filename=f"{index}_0.png",
                edited_image=_image_bytes(2 * index + 1, "JPEG"),
                edited_filename=f"{index}_1.jpg",
                judge_model="gpt-4o-2024-05-13",
                prompt_id="reward-edit-v1",
            )
        )
    return rows


def _assert_rows_equal(dataset, rows: list[RewardRow]) -> None:
    assert dataset.num_rows == len(rows)
    assert list(dataset.column_names) == list(COLUMNS)
    by_key = {row.item_id: row for row in rows}
    for record in dataset.cast_column("original", dataset.features["original"].__class__(decode=False)).cast_column(
        "edited", dataset.features["edited"].__class__(decode=False)
    ):
        row = by_key[record["id"]]
        assert record["instruction"] == row.instruction
        assert record["original"]["bytes"] == row.original_image
        assert record["edited"]["bytes"] == row.edited_image
        assert (record["following_score"], record["preserving_score"], record["quality_score"]) == row.reward.scores
        assert (
            record["following_failure"],
            record["preserving_failure"],
            record["quality_failure"],
        ) == row.reward.failure_texts
        assert record["judge_model"] == row.judge_model and record["prompt_id"] == row.prompt_id


def test_staged_dataset_folder_loads_with_datasets_and_keeps_image_bytes(tmp_path):
    from datasets import load_dataset

    rows = make_rows(5)
    staged = stage_dataset_folder(rows, "tester/rewards", tmp_path / "staged", max_shard_bytes=2000)
    shards = sorted(p.name for p in (staged / "data").iterdir())
    assert len(shards) > 1 and shards[0] == f"train-00000-of-{len(shards):05d}.parquet"
    dataset = load_dataset(str(staged), split="train")
    assert type(dataset.features["original"]).__name__ == "Image"
    _assert_rows_equal(dataset, rows)
    decoded = dataset[0]["edited"]
    assert decoded.size == (16, 12)


def test_dataset_card_has_hub_metadata_and_explains_perspectives(tmp_path):
    from huggingface_hub import DatasetCard

    staged = stage_dataset_folder(make_rows(3), "tester/rewards", tmp_path / "staged")
    card = DatasetCard.load(staged / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0"
    assert data["task_categories"] == ["image-to-image"]
    assert data["size_categories"] == ["n<1K"]
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    feature_names = [feature["name"] for feature in data["dataset_info"]["features"]]
    assert feature_names == list(COLUMNS)
    for text in ("instruction following", "detail preserving", "generation quality", "0 (fails completely) to 5"):
        assert text in card.text


def test_push_dataset_round_trips_through_load_dataset(hub):
    from datasets import load_dataset

    rows = make_rows(4)
    result = push_dataset(rows, "tester/rewards", max_shard_bytes=1500)
    assert result.created_commit
    assert hub.count("lfs-upload") >= 2  # parquet shards travel through LFS
    dataset = load_dataset("tester/rewards", split="train")
    _assert_rows_equal(dataset, rows)


def test_unchanged_dataset_repush_makes_no_commit_and_changed_push_replaces_stale_shards(hub):
    rows = make_rows(4)
    first = push_dataset(rows, "tester/rewards", max_shard_bytes=1500)
    commits_after_first = len(hub.commits("tester/rewards", "dataset"))
    again = push_dataset(rows, "tester/rewards", max_shard_bytes=1500)
    assert not again.created_commit and again.commit_oid == first.commit_oid
    assert len(hub.commits("tester/rewards", "dataset")) == commits_after_first
    fewer = push_dataset(rows[:1], "tester/rewards")
    assert fewer.created_commit
    files = set(hub.repos[("dataset", "tester/rewards")].head("main").files)
    assert {f for f in files if f.startswith("data/")} == {"data/train-00000-of-00001.parquet"}


def test_push_dataset_dry_run_writes_folder_without_token_or_network(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = push_dataset(make_rows(2), "tester/rewards", dry_run=True, dry_run_dir=tmp_path / "out")
    assert result.commit_oid is None
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
    ]


def test_reward_row_takes_a_reward_record_with_an_id_and_image_bytes():
    record = RewardRecord(scores=(5, 1, 1), item_id="k")
    images = {"original_image": b"x", "original_filename": "a.png", "edited_image": b"y", "edited_filename": "b.png"}
    assert RewardRow(reward=record, instruction="i", **images).to_example()["following_score"] == 5.0
    with pytest.raises(TypeError, match="must be a RewardRecord"):
        RewardRow(reward=((5, 1, 1), ("", "", "")), instruction="i", **images)
    with pytest.raises(ValueError, match="item_id"):
        RewardRow(reward=RewardRecord(scores=(5, 1, 1)), instruction="i", **images)
    with pytest.raises(ValueError, match="`edited_image` must be the non-empty bytes"):
        RewardRow(reward=record, instruction="i", **{**images, "edited_image": b""})


def _make_store(tmp_path, count: int = 3):
    """A small annotation store with images on disk: items 0..count-1 complete, one extra item incomplete."""
    from reward_edit_pipeline.judge.base import PerspectiveJudgment
    from reward_edit_pipeline.judge.store import AnnotationStore

    images = tmp_path / "images"
    images.mkdir()
    store_path = tmp_path / "rewards.sqlite"
    with AnnotationStore(store_path) as store:
        items, entries = [], []
        for index in range(count + 1):
            item_id = f"{index:07d}"
            (images / f"{item_id}_0.png").write_bytes(_image_bytes(10 + index, "PNG"))
            (images / f"{item_id}_1.jpg").write_bytes(_image_bytes(20 + index, "JPEG"))
            keys = {p: f"{item_id}-{p}" for p in ("following", "preserving", "quality")}
            items.append(
                {
                    "item_id": item_id,
                    "instruction": f"add {index} balloons",
                    "original": str(images / f"{item_id}_0.png"),
                    "edited": f"images/{item_id}_1.jpg",  # relative to the store's folder
                    "call_keys": keys,
                }
            )
            for offset, perspective in enumerate(("following", "preserving", "quality")):
                if index == count and perspective == "quality":
                    judgment = PerspectiveJudgment.failure(perspective, "timeout", prompt_id="p1", model="judge-x")
                else:
                    text = "" if (index + offset) % 2 else f"{perspective} problem {index}"
                    judgment = PerspectiveJudgment.success(
                        perspective, (index + offset) % 6, "yes", text, prompt_id="p1", model="judge-x"
                    )
                entries.append((keys[perspective], item_id, judgment, "judge", None))
        store.put_items(items)
        store.record_many(entries)
    return store_path


def test_store_push_loads_back_for_training_readers_with_identical_rewards_and_images(hub, tmp_path):
    """Round trip store -> Hub -> load_dataset; training's readers see the same triplets and reward records."""
    from datasets import load_dataset
    from reward_edit_pipeline.hub.sources import reward_records_from_dataset

    from reward_edit_pipeline.data import iter_triplets, load_reward_records

    store_path = _make_store(tmp_path, count=3)
    result = push_dataset(store_path, "tester/store-rewards")
    assert result.created_commit
    dataset = load_dataset("tester/store-rewards", split="train")
    assert dataset.num_rows == 3  # the incomplete item is not published
    assert reward_records_from_dataset(dataset) == load_reward_records(store_path)
    raw = dataset.cast_column("original", dataset.features["original"].__class__(decode=False))
    raw = raw.cast_column("edited", dataset.features["edited"].__class__(decode=False))
    triplets = {t.id: t for t in iter_triplets(raw)}
    assert sorted(triplets) == ["0000000", "0000001", "0000002"]
    for item_id, triplet in triplets.items():
        assert triplet.instruction == f"add {int(item_id)} balloons"
        assert triplet.original == (tmp_path / "images" / f"{item_id}_0.png").read_bytes()
        assert triplet.edited == (tmp_path / "images" / f"{item_id}_1.jpg").read_bytes()
    assert set(dataset["judge_model"]) == {"judge-x"} and set(dataset["prompt_id"]) == {"p1"}


def test_store_with_incomplete_items_fails_when_asked_to(tmp_path):
    store_path = _make_store(tmp_path, count=1)
    with pytest.raises(ValueError, match="not judged on all three perspectives"):
        push_dataset(store_path, "tester/x", dry_run=True, dry_run_dir=tmp_path / "out", on_incomplete="error")


def test_export_with_missing_image_names_the_item_and_path(tmp_path):
    import json

    export = tmp_path / "export.jsonl"
    row = {
        "id": "a1",
        "instruction": "x",
        "original": "nope/a.png",
        "edited": "nope/b.png",
        "status": "done",
        "scores": [1, 2, 3],
        "failure_texts": ["", "", ""],
        "models": ["m"] * 3,
        "prompt_ids": ["p"] * 3,
    }
    export.write_text(json.dumps(row) + "\n")
    with pytest.raises(FileNotFoundError, match=r"item 'a1': original image 'nope/a.png' not found"):
        push_dataset(export, "tester/x", dry_run=True, dry_run_dir=tmp_path / "out")


@pytest.mark.parametrize("export_format", ["jsonl", "parquet", "hf-dataset"])
def test_exports_of_a_store_stage_the_same_dataset_as_the_store(tmp_path, export_format):
    from reward_edit_pipeline.data import export_store

    store_path = _make_store(tmp_path, count=2)
    export_path = tmp_path / f"export.{export_format}"
    export_store(store_path, export_format, export_path)
    from_store = stage_dataset_folder_from(store_path, tmp_path / "a")
    from_export = stage_dataset_folder_from(export_path, tmp_path / "b")
    assert from_store == from_export


def stage_dataset_folder_from(source, out):
    result = push_dataset(source, "tester/rewards", dry_run=True, dry_run_dir=out)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in result.staged_folder.rglob("*") if p.is_file()}


def test_official_annotations_without_images_take_them_from_the_clip_filtered_folder(tmp_path):
    import json

    from datasets import load_dataset

    from reward_edit_pipeline.data.official import import_official

    root = tmp_path / "clip-filtered"
    for index, key in enumerate(["0000011", "0000042"]):
        (root / key).mkdir(parents=True)
        (root / key / "prompt.json").write_text(json.dumps({"edit": f"make it snowy {index}"}))
        (root / key / "77_0.jpg").write_bytes(_image_bytes(index, "JPEG"))
        (root / key / "77_1.jpg").write_bytes(_image_bytes(index + 10, "JPEG"))
    official = {
        "0000011": [
            {"Score": 5, "Negative Prompt": "None"},
            {"Score": 3, "Negative Prompt": "the dog moved"},
            {"Score": 4, "Negative Prompt": "None"},
        ],
        "0000042": [
            {"Score": 1, "Negative Prompt": "nothing changed"},
            {"Score": 5, "Negative Prompt": "None"},
            {"Score": 2, "Negative Prompt": "blurry"},
        ],
    }
    (tmp_path / "RewardEdit_20K.json").write_text(json.dumps(official))
    import_official(tmp_path / "RewardEdit_20K.json", tmp_path / "store.sqlite")  # scores only, no images
    with pytest.raises(ValueError, match="pass `triplets`"):
        push_dataset(tmp_path / "store.sqlite", "tester/x", dry_run=True, dry_run_dir=tmp_path / "fail")
    result = push_dataset(
        tmp_path / "store.sqlite", "tester/x", triplets=root, dry_run=True, dry_run_dir=tmp_path / "out"
    )
    dataset = load_dataset(str(result.staged_folder), split="train").sort("id")
    assert dataset["instruction"] == ["make it snowy 0", "make it snowy 1"]
    assert dataset["following_failure"] == ["", "nothing changed"]
    assert dataset["quality_score"] == [4.0, 2.0]
    assert dataset["prompt_id"] == ["official-rewardedit20k"] * 2
    raw = dataset.cast_column("edited", dataset.features["edited"].__class__(decode=False))
    assert raw[1]["edited"]["bytes"] == (root / "0000042" / "77_1.jpg").read_bytes()
