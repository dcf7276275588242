"""Benchmark loaders, resizing, statistics and report rendering (no model, no judge)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reward_edit_pipeline.benchmark.generation import (
    GenerationConfig,
    build_settings,
    official_edit_size,
    parse_reward_scores,
    plan_edits,
    prepare_input_image,
)
from reward_edit_pipeline.benchmark.loaders import (
    EDIT_TYPES,
    BenchmarkFormatError,
    load_benchmark,
    load_jsonl_benchmark,
    load_real_edit,
)
from reward_edit_pipeline.benchmark.metrics import load_metric_suite, pixel_distances
from reward_edit_pipeline.benchmark.report import build_report, compare_settings, render_html, render_markdown
from reward_edit_pipeline.benchmark.stats import bootstrap_mean, sign_test_p_value


def _save_photo(path: Path, name: str) -> None:
    import skimage.data

    Image.fromarray(getattr(skimage.data, name)()).save(path)


@pytest.fixture(scope="module")
def official_bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real_edit")
    (root / "Real-Edit").mkdir()
    _save_photo(root / "Real-Edit" / "chelsea.png", "chelsea")
    _save_photo(root / "coffee.jpg", "coffee")
    instructions = {
        "chelsea.png": [
            "1. Local: make the cat's eyes blue",
            "2. Remove: remove the cat",
            "7. Style: make it a sketch",
        ],
        "coffee.jpg": ["3. Add: add a spoon: silver", "5. Background: put the cup on grass"],
    }
    (root / "real_edit_instruct.json").write_text(json.dumps(instructions))
    return root


def test_official_layout_loads_items_in_file_order_with_types_numbers_and_subfolder_images(official_bench):
    items = load_real_edit(official_bench)
    assert [(item.item_id, item.edit_type, item.number) for item in items] == [
        ("chelsea-1", "Local", 1),
        ("chelsea-2", "Remove", 2),
        ("chelsea-7", "Style", 7),
        ("coffee-3", "Add", 3),
        ("coffee-5", "Background", 5),
    ]
    assert items[0].image_path == (official_bench / "Real-Edit" / "chelsea.png").resolve()
    assert items[3].image_path == (official_bench / "coffee.jpg").resolve()
    # the instruction is everything after the type's ": " (a later ": " stays in the instruction)
    assert items[3].instruction == "add a spoon: silver"
    assert load_benchmark(official_bench) == items


@pytest.mark.parametrize(
    ("instructions", "message"),
    [
        ({"chelsea.png": ["1. Lokal: blue eyes"]}, "unknown edit type 'Lokal'"),
        ({"chelsea.png": ["1. local: blue eyes"]}, "did you mean 'Local'"),
        ({"chelsea.png": ["Local: blue eyes"]}, 'expected a string like "1. Local: <instruction>"'),
        ({"chelsea.png": ["1. Local: a", "1. Add: b"]}, "number 1 appears twice"),
        ({"chelsea.png": "1. Local: a"}, "non-empty list"),
        ({"missing.png": ["1. Local: a"]}, "image 'missing.png' not found"),
        ({"../chelsea.png": ["1. Local: a"]}, "must be relative"),
        ([], "expected a non-empty object"),
    ],
)
def test_official_layout_rejects_malformed_files_with_a_clear_error(tmp_path, instructions, message):
    _save_photo(tmp_path / "chelsea.png", "chelsea")
    (tmp_path / "real_edit_instruct.json").write_text(json.dumps(instructions))
    with pytest.raises(BenchmarkFormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_real_edit(tmp_path)


def test_official_layout_rejects_invalid_json_naming_the_file(tmp_path):
    (tmp_path / "real_edit_instruct.json").write_text("{not json")
    with pytest.raises(BenchmarkFormatError, match="real_edit_instruct.json: not valid JSON"):
        load_benchmark(tmp_path)


def test_jsonl_layout_loads_records_and_numbers_repeated_images(tmp_path):
    _save_photo(tmp_path / "astronaut.png", "astronaut")
    lines = [
        {"image": "astronaut.png", "instruction": "make it snow", "type": "Global"},
        {"image": "astronaut.png", "instruction": "add a hat", "type": "Add", "id": "hat"},
        {"image": "astronaut.png", "instruction": "in van Gogh style", "type": "Style"},
    ]
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    items = load_benchmark(tmp_path)
    assert [(item.item_id, item.edit_type, item.instruction) for item in items] == [
        ("astronaut-1", "Global", "make it snow"),
        ("hat", "Add", "add a hat"),
        ("astronaut-3", "Style", "in van Gogh style"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "astronaut.png", "instruction": "x"}', "missing key\\(s\\) type"),
        ('{"image": "astronaut.png", "instruction": "x", "type": "Zoom"}', "unknown edit type 'Zoom'"),
        ('{"image": "nope.png", "instruction": "x", "type": "Add"}', "image 'nope.png' not found"),
        ('{"image": "astronaut.png", "instruction": "", "type": "Add"}', "'instruction' must be a non-empty string"),
        ("[1, 2]", "expected an object"),
        ("{oops", "bench.jsonl:1: not valid JSON"),
    ],
)
def test_jsonl_layout_rejects_bad_lines_naming_file_and_line(tmp_path, line, message):
    _save_photo(tmp_path / "astronaut.png", "astronaut")
    (tmp_path / "bench.jsonl").write_text(line + "\n")
    with pytest.raises(BenchmarkFormatError, match=message):
        load_jsonl_benchmark(tmp_path / "bench.jsonl")


def test_load_benchmark_explains_an_empty_folder(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="found neither real_edit_instruct.json"):
        load_benchmark(tmp_path)


def test_official_edit_size_matches_the_official_formula():
    # long side scaled to 512, then the short side rounded *up* to a multiple of 64 and the long side rounded down
    assert official_edit_size(512, 512) == (512, 512)
    assert official_edit_size(451, 300) == (576, 384)
    assert official_edit_size(640, 427) == (512, 384)
    assert official_edit_size(300, 451) == (384, 576)
    width, height = official_edit_size(451, 300, resolution=64, multiple=32)
    assert (width % 32, height % 32) == (0, 0)
    image = prepare_input_image(Image.new("RGB", (451, 300)), resolution=64, multiple=32)
    assert image.size == official_edit_size(451, 300, 64, 32)


def test_generation_config_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        GenerationConfig(steps=0)
    with pytest.raises(ValueError, match="`multiple` must be a positive multiple of 8"):
        GenerationConfig(multiple=12)
    with pytest.raises(ValueError, match="`resolution` must be an integer >= `multiple`"):
        GenerationConfig(resolution=32, multiple=64)
    with pytest.raises(ValueError, match="`scheduler` must be one of"):
        GenerationConfig(scheduler="ddim")


def test_reward_score_settings_parse_and_reject_out_of_range():
    assert parse_reward_scores("5,5,5") == (5.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="three comma-separated numbers"):
        parse_reward_scores("none")
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        parse_reward_scores("6,5,5")
    with pytest.raises(ValueError, match="three comma-separated numbers"):
        parse_reward_scores("5;5;5")
    settings = build_settings(["/m/a", "/n/b"], [(5.0, 5.0, 5.0), (3.0, 4.5, 5.0)])
    assert [s.label for s in settings] == ["a [5,5,5]", "a [3,4.5,5]", "b [5,5,5]", "b [3,4.5,5]"]
    assert len({s.slug for s in settings}) == 4


def test_edit_cache_key_changes_with_seed_scores_and_instruction(official_bench, tmp_path):
    items = load_real_edit(official_bench)
    settings = build_settings(["model"], [(5.0, 5.0, 5.0), (3.0, 3.0, 3.0)])
    plan = plan_edits(items, settings, GenerationConfig(resolution=64, multiple=32), tmp_path)
    again = plan_edits(items, settings, GenerationConfig(resolution=64, multiple=32), tmp_path)
    other_seed = plan_edits(items, settings, GenerationConfig(resolution=64, multiple=32, seed=1), tmp_path)
    paths = {key: record.edited_path for key, record in plan.records.items()}
    assert paths == {key: record.edited_path for key, record in again.records.items()}
    assert len(set(paths.values())) == len(paths) == 10
    assert not set(paths.values()) & {record.edited_path for record in other_seed.records.values()}
    # originals are prepared once per photo, at the edit size
    originals = {record.original_path for record in plan.records.values()}
    assert len(originals) == 2 and all(Image.open(path).size[1] % 32 == 0 for path in originals)


def test_bootstrap_mean_is_deterministic_and_brackets_the_mean():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    estimate = bootstrap_mean(values, resamples=500, seed=3)
    assert estimate == bootstrap_mean(values, resamples=500, seed=3)
    assert estimate.ci_low <= estimate.mean == 0.75 <= estimate.ci_high
    assert 0.0 <= estimate.ci_low < estimate.ci_high <= 1.0
    assert bootstrap_mean([]).mean is None and bootstrap_mean([2.0]).to_dict() == {
        "mean": 2.0,
        "ci_low": 2.0,
        "ci_high": 2.0,
        "n": 1,
    }


def test_sign_test_matches_exact_binomial_values():
    assert sign_test_p_value(0, 0) is None
    assert sign_test_p_value(5, 0) == pytest.approx(2 / 32)
    assert sign_test_p_value(3, 3) == 1.0
    assert sign_test_p_value(9, 1) == pytest.approx(2 * 11 / 1024)


def test_pixel_distances_are_zero_for_identical_images_and_exact_for_known_ones():
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert pixel_distances(black, black) == {"l1": 0.0, "l2": 0.0}
    assert pixel_distances(black, white) == {"l1": 1.0, "l2": 1.0}
    half = Image.fromarray(np.full((8, 8, 3), 51, dtype=np.uint8))
    assert pixel_distances(black, half)["l2"] == pytest.approx(0.04)


def test_missing_clip_and_dino_weights_are_skipped_with_a_notice(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    suite = load_metric_suite()
    assert suite.available == ["l1", "l2"]
    assert any(n.startswith("CLIP-I/CLIP-T skipped") for n in suite.notices)
    assert any(n.startswith("DINO skipped") for n in suite.notices)
    with pytest.raises(ValueError, match="--clip-model"):
        load_metric_suite(clip_model=str(tmp_path / "no-such-clip"), enabled=("clip",))


def _row(setting, item_id, edit_type, scores, verdict="yes", failed=()):
    judgments = {}
    for perspective, score in zip(("following", "preserving", "quality"), scores):
        if perspective in failed:
            judgments[perspective] = {
                "ok": False,
                "score": None,
                "verdict": None,
                "failure_text": "",
                "error": "unparsable_reply",
                "error_message": "no JSON <b>",
            }
        else:
            judgments[perspective] = {
                "ok": True,
                "score": score,
                "verdict": verdict if perspective == "following" else "yes",
                "failure_text": "the hat <is> red" if score < 5 else "",
                "error": None,
                "error_message": None,
            }
    return {
        "setting": setting,
        "item_id": item_id,
        "image": "x.png",
        "edit_type": edit_type,
        "instruction": "add a <hat>",
        "original": "originals/x.png",
        "edited": f"edits/{setting}/{item_id}.png",
        "judgments": judgments,
        "metrics": {"l1": 0.1, "l2": 0.01},
    }


def test_report_counts_failed_judgments_and_computes_accuracy_per_type():
    rows = [
        _row("a", "i1", "Local", (5, 4, 3), "yes"),
        _row("a", "i2", "Local", (2, 4, 3), "no"),
        _row("a", "i3", "Add", (4, 5, 5), "yes", failed=("preserving",)),
        _row("b", "i1", "Local", (3, 4, 4), "no"),
        _row("b", "i2", "Local", (2, 5, 1), "no"),
        _row("b", "i3", "Add", (1, 1, 1), "no", failed=("following", "quality")),
    ]
    settings = [{"slug": "a", "label": "model A"}, {"slug": "b", "label": "model B"}]
    report = build_report(rows, settings, EDIT_TYPES, {"bench": "x"}, ["a notice"], ["l1", "l2"], ("a", "b"), 200)
    overall_a = report["results"]["a"]["overall"]
    assert overall_a["following_accuracy"]["mean"] == pytest.approx(2 / 3)
    assert overall_a["mean_preserving"]["n"] == 2 and overall_a["mean_preserving"]["mean"] == 4.0
    assert overall_a["failed_judgments"] == {
        "following": 0,
        "preserving": 1,
        "quality": 0,
        "total": 1,
        "by_reason": {"unparsable_reply": 1},
    }
    assert report["results"]["a"]["by_type"]["Local"]["following_accuracy"]["mean"] == 0.5
    assert set(report["results"]["a"]["by_type"]) == {"Local", "Add"}
    assert report["results"]["b"]["overall"]["failed_judgments"]["total"] == 2
    assert report["results"]["a"]["overall"]["metrics"]["l1"]["mean"] == pytest.approx(0.1)

    comparison = report["comparison"]
    assert comparison["overall"]["following"] == {
        "wins": 1,
        "ties": 1,
        "losses": 0,
        "not_compared": 1,
        "sign_test_p": 1.0,
    }
    assert comparison["overall"]["preserving"]["losses"] == 1
    assert comparison["overall"]["preserving"]["not_compared"] == 1

    markdown = render_markdown(report)
    assert "| model A | 66.7 [" in markdown and "> Note: a notice" in markdown
    assert "## model A vs model B" in markdown
    page = render_html(report, ["score_distributions.png"])
    assert "add a &lt;hat&gt;" in page and "the hat &lt;is&gt; red" in page and "<hat>" not in page
    assert "failed (unparsable_reply)" in page and "edits/a/i1.png" in page and "originals/x.png" in page
    assert compare_settings(rows, "b", "a", EDIT_TYPES)["overall"]["following"]["losses"] == 1


def test_clip_and_dino_metrics_run_from_local_folders(tmp_path):
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from reward_edit_pipeline.testing import get_dummy_tokenizer

    torch.manual_seed(0)
    tokenizer = get_dummy_tokenizer()
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, **tower,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(image_size=32, patch_size=8, **tower),
            projection_dim=16,
        )
    )  # fmt: skip
    clip.save_pretrained(tmp_path / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path / "clip")
    ViTModel(ViTConfig(image_size=32, patch_size=8, **tower), add_pooling_layer=False).save_pretrained(
        tmp_path / "dino"
    )
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dino")

    suite = load_metric_suite(clip_model=str(tmp_path / "clip"), dino_model=str(tmp_path / "dino"))
    assert suite.available == ["l1", "l2", "clip_i", "clip_t", "dino"] and suite.notices == []
    import skimage.data

    cat = Image.fromarray(skimage.data.chelsea())
    coffee = Image.fromarray(skimage.data.coffee()).resize(cat.size)
    same = suite(cat, cat, "make the cat blue")
    different = suite(cat, coffee, "make the cat blue")
    assert same["clip_i"] == pytest.approx(1.0, abs=1e-5) and same["dino"] == pytest.approx(1.0, abs=1e-5)
    assert different["clip_i"] < 1.0 - 1e-4 and different["dino"] < 1.0 - 1e-4
    assert -1.0 <= different["clip_t"] <= 1.0 and same["l1"] == 0.0 < different["l1"]
