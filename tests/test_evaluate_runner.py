"""`run_evaluation` with an in-process fake pipeline and judge: caching, resume, errors, report contents."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from reward_edit_pipeline.benchmark.generation import GenerationConfig
from reward_edit_pipeline.benchmark.runner import EvaluationConfig, run_evaluation


class FakePipeline:
    """Stands in for RewardEditPipeline: the edit is noise from the generator, shifted by the reward scores."""

    def __init__(self, model: str, log: list) -> None:
        self.model = model
        self.log = log

    def __call__(self, prompt, image, *, generator, reward_scores, **kwargs):
        self.log.append((self.model, prompt, reward_scores, kwargs["num_inference_steps"]))
        noise = torch.rand((image.height, image.width, 3), generator=generator).numpy()
        shift = sum(reward_scores) / 30.0
        pixels = np.clip(np.asarray(image, dtype=np.float32) / 255.0 * 0.5 + noise * 0.25 + shift, 0, 1)
        return SimpleNamespace(images=[Image.fromarray((pixels * 255).astype(np.uint8))])


A, B = "model-a_scores-5-5-5", "model-b_scores-5-5-5"


@pytest.fixture()
def bench(tmp_path) -> Path:
    import skimage.data

    root = tmp_path / "bench"
    root.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(skimage.data.chelsea()).save(root / "chelsea.jpg")
    instructions = {
        "astronaut.png": ["1. Local: make the suit red", "6. Global: make it night"],
        "chelsea.jpg": ["2. Remove: remove the cat", "4. Texture: make the fur metallic"],
    }
    (root / "real_edit_instruct.json").write_text(json.dumps(instructions))
    return root


def _config(bench: Path, out: Path, **kwargs) -> EvaluationConfig:
    defaults = dict(
        bench=bench,
        models=["model-a", "model-b"],
        out_dir=out,
        generation=GenerationConfig(steps=2, resolution=32, multiple=16),
        metrics=(),
        bootstrap_resamples=100,
        progress=False,
    )
    defaults.update(kwargs)
    return EvaluationConfig(**defaults)


def _scripted_judge(calls: list):
    """Grades by instruction: "Remove" edits fail to parse, model-b follows worse."""

    def judge_edits(records, progress):
        results = {}
        for record in records:
            calls.append((record.setting.slug, record.item.item_id))
            better = record.setting.model == "model-a"
            judgment = {}
            for perspective in ("following", "preserving", "quality"):
                if record.item.edit_type == "Remove" and perspective == "quality":
                    judgment[perspective] = {
                        "ok": False,
                        "score": None,
                        "verdict": None,
                        "failure_text": "",
                        "error": "unparsable_reply",
                        "error_message": "reply was not JSON",
                    }
                else:
                    score = 4.0 if better else 2.0
                    judgment[perspective] = {
                        "ok": True,
                        "score": score,
                        "verdict": "yes" if better else "no",
                        "failure_text": "" if better else "the suit is still white",
                        "error": None,
                        "error_message": None,
                    }
            results[(record.setting.slug, record.item.item_id)] = judgment
        return results

    return judge_edits


def test_run_evaluation_writes_report_files_grids_and_counts_failed_judgments(bench, tmp_path):
    log: list = []
    calls: list = []
    out = tmp_path / "out"
    report = run_evaluation(
        _config(bench, out, compare=[]), _scripted_judge(calls), lambda setting, cfg: FakePipeline(setting.model, log)
    )
    assert len(log) == 8 and {entry[3] for entry in log} == {2}
    for name in ("report.json", "report.md", "index.html", "plots/score_distributions.png"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"] == report["results"]
    overall_a = report["results"][A]["overall"]
    assert overall_a["following_accuracy"]["mean"] == 1.0
    assert overall_a["failed_judgments"]["quality"] == 1 and overall_a["failed_judgments"]["total"] == 1
    assert report["results"][B]["overall"]["following_accuracy"]["mean"] == 0.0
    assert set(report["results"][A]["by_type"]) == {"Local", "Remove", "Texture", "Global"}
    assert report["results"][A]["by_type"]["Remove"]["failed_judgments"]["by_reason"] == {"unparsable_reply": 1}
    # l1/l2 always; CLIP/DINO disabled here with a notice
    assert report["metric_names"] == ["l1", "l2"] and report["results"][A]["overall"]["metrics"]["l1"]["n"] == 4
    assert any("CLIP-I/CLIP-T skipped" in notice for notice in report["notices"])
    comparison = report["comparison"]
    assert comparison["overall"]["following"]["wins"] == 4
    assert comparison["overall"]["quality"]["not_compared"] == 1
    page = (out / "index.html").read_text()
    for row in report["items"]:
        assert (out / row["edited"]).is_file() and row["edited"] in page
        assert Image.open(out / row["edited"]).size == Image.open(out / row["original"]).size
    assert "the suit is still white" in page and "failed (unparsable_reply)" in page


def test_rerun_reuses_cached_edits_without_loading_models(bench, tmp_path):
    out = tmp_path / "out"
    log: list = []
    run_evaluation(_config(bench, out), None, lambda setting, cfg: FakePipeline(setting.model, log))
    first = {p.name: p.read_bytes() for p in (out / "edits").rglob("*.png")}

    def must_not_load(setting, cfg):
        raise AssertionError(f"model {setting.model} loaded although all its edits are cached")

    report = run_evaluation(_config(bench, out), None, must_not_load)
    assert report["run"]["generated_now"] == {A: 0, B: 0}
    assert {p.name: p.read_bytes() for p in (out / "edits").rglob("*.png")} == first
    assert any("LVLM judging skipped" in notice for notice in report["notices"])


def test_interrupted_generation_resumes_with_identical_images(bench, tmp_path):
    reference_log: list = []
    run_evaluation(
        _config(bench, tmp_path / "reference", models=["model-a"]),
        None,
        lambda s, c: FakePipeline(s.model, reference_log),
    )
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference" / "edits").rglob("*.png")}

    class Crash(Exception):
        pass

    class CrashingPipeline(FakePipeline):
        def __call__(self, *args, **kwargs):
            if len(self.log) == 2:
                raise Crash("power cut")
            return super().__call__(*args, **kwargs)

    out = tmp_path / "resumed"
    crash_log: list = []
    with pytest.raises(Crash):
        run_evaluation(_config(bench, out, models=["model-a"]), None, lambda s, c: CrashingPipeline(s.model, crash_log))
    assert len(list((out / "edits").rglob("*.png"))) == 2
    resume_log: list = []
    run_evaluation(_config(bench, out, models=["model-a"]), None, lambda s, c: FakePipeline(s.model, resume_log))
    assert len(resume_log) == 2  # only the two missing edits
    assert {p.name: p.read_bytes() for p in (out / "edits").rglob("*.png")} == reference


def test_several_score_settings_are_run_as_separate_settings(bench, tmp_path):
    log: list = []
    report = run_evaluation(
        _config(
            bench, tmp_path / "out", models=["model-a"], score_settings=[(5.0, 5.0, 5.0), (3.0, 3.0, 3.0)], limit=2
        ),
        None,
        lambda s, c: FakePipeline(s.model, log),
    )
    assert [s["label"] for s in report["settings"]] == ["model-a [5,5,5]", "model-a [3,3,3]"]
    assert sorted({entry[2] for entry in log}) == [(3.0, 3.0, 3.0), (5.0, 5.0, 5.0)]
    assert len(log) == 4 and report["run"]["n_items"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "`limit` \\(--limit\\) must be an integer >= 1"),
        ({"compare": ["model-a"]}, "--compare takes 0 or 2 settings"),
        ({"compare": ["model-a", "nope"]}, "--compare 'nope' must name exactly one setting"),
        ({"models": ["a", "b", "c"], "compare": []}, "needs exactly 2 settings"),
    ],
)
def test_bad_evaluation_options_raise_clear_errors(bench, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_evaluation(_config(bench, tmp_path / "out", **kwargs), None, lambda s, c: FakePipeline(s.model, []))
