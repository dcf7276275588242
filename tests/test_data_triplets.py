"""Triplet readers: InstructPix2Pix folders (ids = folder names), JSONL/CSV manifests, datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from reward_edit_pipeline.data import Triplet, iter_triplets


def make_key_folder(root: Path, key: str, seeds: list[int], edit) -> None:
    folder = root / key
    folder.mkdir(parents=True)
    for seed in seeds:
        Image.new("RGB", (8, 8)).save(folder / f"{seed}_0.jpg")
        Image.new("RGB", (8, 8)).save(folder / f"{seed}_1.jpg")
    (folder / "prompt.json").write_text(json.dumps({"input": "x", "edit": edit, "output": "y"}))


def test_ip2p_folder_ids_are_folder_names_with_first_listed_seed(tmp_path):
    make_key_folder(tmp_path, "0000011", [7, 3], "make it red")
    make_key_folder(tmp_path, "0000002", [5], ["add a hat", "put on a hat"])
    (tmp_path / "seeds.json").write_text(json.dumps([["0000011", [7, 3]], ["0000002", [5]]]))
    triplets = list(iter_triplets(tmp_path))
    assert [t.id for t in triplets] == ["0000011", "0000002"]  # seeds.json order
    assert Path(triplets[0].original).name == "7_0.jpg" and Path(triplets[0].edited).name == "7_1.jpg"
    assert triplets[1].instruction == "add a hat"  # first of a list


def test_ip2p_folder_without_seeds_json_uses_smallest_seed_and_all_mode(tmp_path):
    make_key_folder(tmp_path, "b", [12, 3], "x")
    make_key_folder(tmp_path, "a", [4], "y")
    triplets = list(iter_triplets(tmp_path))
    assert [(t.id, Path(t.original).name) for t in triplets] == [("a", "4_0.jpg"), ("b", "3_0.jpg")]
    every = list(iter_triplets(tmp_path, seeds="all"))
    assert [t.id for t in every] == ["a/4", "b/3", "b/12"]


def test_ip2p_folder_errors_name_the_problem(tmp_path):
    make_key_folder(tmp_path, "k", [], "x")
    with pytest.raises(FileNotFoundError, match="image pair"):
        list(iter_triplets(tmp_path))
    bad = tmp_path / "other"
    make_key_folder(bad, "k", [1], 42)
    with pytest.raises(ValueError, match="'edit'"):
        list(iter_triplets(bad))
    with pytest.raises(ValueError, match="seeds"):
        list(iter_triplets(bad, seeds="some"))


def test_jsonl_and_csv_manifests_resolve_relative_paths(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"original": "o.png", "edited": "/abs/e.png", "instruction": "a"})
        + "\n\n"
        + json.dumps({"id": "x7", "original": "o2.png", "edited": "e2.png", "instruction": "b"})
        + "\n"
    )
    triplets = list(iter_triplets(tmp_path / "m.jsonl"))
    assert [t.id for t in triplets] == ["0", "x7"]
    assert triplets[0].original == tmp_path / "o.png" and triplets[0].edited == Path("/abs/e.png")
    (tmp_path / "m.csv").write_text('id,original,edited,instruction\nq,o.png,e.png,"make it, red"\n')
    (triplet,) = iter_triplets(tmp_path / "m.csv")
    assert triplet == Triplet("q", "make it, red", tmp_path / "o.png", tmp_path / "e.png")


def test_manifest_errors_name_row_and_columns(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"original": "o.png", "instruction": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0 lacks \['edited'\]"):
        list(iter_triplets(tmp_path / "m.jsonl"))
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"id": "1", "original": "o", "edited": "e", "instruction": "i"}) for _ in range(2))
    )
    with pytest.raises(ValueError, match="duplicate id '1'"):
        list(iter_triplets(tmp_path / "d.jsonl"))
    with pytest.raises(FileNotFoundError):
        iter_triplets(tmp_path / "missing.jsonl")


def test_datasets_with_ip2p_columns_and_saved_folder(tmp_path):
    import datasets  # the [test] extra installs it: a missing package must fail, not skip

    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(2)]
    dataset = datasets.Dataset.from_dict(
        {
            "original_prompt": ["a", "b"],
            "original_image": images,
            "edit_prompt": ["make it blue", "add snow"],
            "edited_prompt": ["a'", "b'"],
            "edited_image": images,
        },
        features=datasets.Features(
            {
                "original_prompt": datasets.Value("string"),
                "original_image": datasets.Image(),
                "edit_prompt": datasets.Value("string"),
                "edited_prompt": datasets.Value("string"),
                "edited_image": datasets.Image(),
            }
        ),
    )
    triplets = list(iter_triplets(dataset))
    assert [(t.id, t.instruction) for t in triplets] == [("0", "make it blue"), ("1", "add snow")]
    assert [t.original.getpixel((0, 0)) for t in triplets] == [(0, 0, 0), (1, 0, 0)]  # the images themselves
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert [t.instruction for t in iter_triplets(tmp_path / "saved")] == ["make it blue", "add snow"]
    with pytest.raises(ValueError, match="needs columns"):
        list(iter_triplets(datasets.Dataset.from_dict({"x": [1]})))


def test_hf_prefix_streams_a_dataset_folder(tmp_path):
    import datasets  # the [test] extra installs it: a missing package must fail, not skip

    original = tmp_path / "o.png"
    Image.new("RGB", (8, 8)).save(original)
    folder = tmp_path / "hub_like"
    folder.mkdir()
    datasets.Dataset.from_dict(
        {"id": ["a", "b"], "original": [str(original)] * 2, "edited": [str(original)] * 2, "instruction": ["x", "y"]}
    ).to_parquet(str(folder / "train.parquet"))
    triplets = list(iter_triplets(f"hf:{folder}"))
    assert [(t.id, t.instruction, t.original) for t in triplets] == [
        ("a", "x", str(original)),
        ("b", "y", str(original)),
    ]
    with pytest.raises(ValueError, match="hf:"):
        iter_triplets("hf:")
