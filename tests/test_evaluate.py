"""`reward-edit evaluate` end to end: tiny saved models, real photos, the loopback OpenAI-protocol judge server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import OpenAIServer, Reply
from PIL import Image

from reward_edit_pipeline.benchmark.generation import GenerationConfig
from reward_edit_pipeline.benchmark.runner import EvaluationConfig, run_evaluation
from reward_edit_pipeline.benchmark.scoring import make_store_judge
from reward_edit_pipeline.cli import main as cli_main
from reward_edit_pipeline.judge import AnnotationStore, OpenAIJudge

PHOTOS = ("astronaut", "chelsea", "coffee")
INSTRUCTIONS = {
    "astronaut.png": ["1. Local: make the suit red", "6. Global: make it a night scene"],
    "chelsea.png": ["2. Remove: remove the cat", "7. Style: paint it like Van Gogh"],
    "coffee.png": ["3. Add: add a spoon next to the cup", "5. Background: put the cup on a wooden table"],
}
pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models run faster on one thread
N_ITEMS = 6
# tiny sizes: long side 32, multiples of 16 (the dummy UNet halves the 1/8 latent once)
FAST = ["--steps", "2", "--resolution", "32", "--multiple", "16", "--no-progress", "--bootstrap", "200"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    from reward_edit_pipeline.testing import save_dummy_pipeline

    root = tmp_path_factory.mktemp("models")
    return str(save_dummy_pipeline(root / "model-a", seed=0)), str(save_dummy_pipeline(root / "model-b", seed=1))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    import skimage.data

    root = tmp_path_factory.mktemp("real_edit")
    (root / "Real-Edit").mkdir()
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(root / "Real-Edit" / f"{name}.png")
    (root / "real_edit_instruct.json").write_text(json.dumps(INSTRUCTIONS))
    return root


def test_evaluate_cli_two_models_writes_full_report_and_rerun_makes_zero_calls(models, bench, openai_server, tmp_path):
    server = openai_server
    out = tmp_path / "eval"
    argv = ["evaluate", "--bench", str(bench), "--model", models[0], "--model", models[1], "--out", str(out)]
    argv += ["--base-url", server.base_url, "--judge-model", "judge-test", "--compare", *FAST]
    assert cli_main(argv) == 0

    assert server.chat_count == 2 * N_ITEMS * 3  # one request per perspective, per item, per model
    report = json.loads((out / "report.json").read_text())
    assert [s["label"] for s in report["settings"]] == ["model-a", "model-b"]
    assert report["run"]["n_items"] == N_ITEMS and report["run"]["judge_model"] == "judge-test"
    assert report["run"]["judge_snapshots"] == ["gpt-4o-2024-08-06"]  # what the server reported

    # the report agrees with the judgments in the store
    with AnnotationStore(out / "judgments.sqlite", readonly=True) as store:
        assert len(store) == 2 * N_ITEMS
        for setting in report["settings"]:
            rows = [row for row in report["items"] if row["setting"] == setting["slug"]]
            stored = [store.get(f"{setting['slug']}/{Path(row['edited']).stem}") for row in rows]
            assert all(item.complete for item in stored)
            yes = [item.judgments["following"].verdict == "yes" for item in stored]
            overall = report["results"][setting["slug"]]["overall"]
            assert overall["following_accuracy"]["mean"] == pytest.approx(sum(yes) / N_ITEMS)
            assert overall["mean_quality"]["mean"] == pytest.approx(sum(i.scores[2] for i in stored) / N_ITEMS)
            assert overall["failed_judgments"]["total"] == 0
            assert overall["following_accuracy"]["ci_low"] <= overall["following_accuracy"]["mean"]
            assert set(report["results"][setting["slug"]]["by_type"]) == {
                "Local",
                "Remove",
                "Add",
                "Background",
                "Global",
                "Style",
            }
    assert report["metric_names"][:2] == ["l1", "l2"]
    assert report["comparison"]["n_items"] == N_ITEMS
    tally = report["comparison"]["overall"]["following"]
    assert tally["wins"] + tally["ties"] + tally["losses"] + tally["not_compared"] == N_ITEMS

    # edits have the official-formula size of each photo (astronaut 32x32, chelsea/coffee 48x32)
    sizes = {row["image"]: Image.open(out / row["edited"]).size for row in report["items"]}
    assert sizes == {"astronaut.png": (32, 32), "chelsea.png": (48, 32), "coffee.png": (48, 32)}
    page = (out / "index.html").read_text()
    assert page.count("<img src='edits/") == 2 * N_ITEMS and "make the suit red" in page
    assert "plots/score_distributions.png" in page and (out / "plots" / "score_distributions.png").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    assert "| model-a |" in markdown and "## model-a vs model-b" in markdown and "## model-b by edit type" in markdown

    # re-run: every edit cached (models not loaded), every judgment in the store: zero calls, same numbers
    edits_before = {p: p.read_bytes() for p in (out / "edits").rglob("*.png")}
    server.reset_counters()
    assert cli_main(argv) == 0
    assert server.chat_count == 0
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["results"] == report["results"]
    assert set(rerun["run"]["generated_now"].values()) == {0}
    assert {p: p.read_bytes() for p in (out / "edits").rglob("*.png")} == edits_before


def test_failed_judgments_are_counted_then_retried_to_the_uninterrupted_result(models, bench, openai_server, tmp_path):
    server = openai_server
    generation = GenerationConfig(steps=2, resolution=32, multiple=16)

    def config(out: Path) -> EvaluationConfig:
        return EvaluationConfig(
            bench=bench, models=[models[0]], out_dir=out, generation=generation, progress=False, bootstrap_resamples=50
        )

    def judge(store: Path):
        return make_store_judge(store, judge=OpenAIJudge(base_url=server.base_url, max_retries=0))

    reference = run_evaluation(config(tmp_path / "reference"), judge(tmp_path / "reference.sqlite"))

    # the judge server breaks after 7 requests: the rest are stored as failures, counted in the report
    server.reset_counters()
    healthy = server.responder

    def breaking(request):
        if server.chat_count > 7:
            return Reply("The edit looks fine overall, nice colours.")
        return (healthy or __import__("openai_server").default_responder)(request, server)

    server.responder = breaking
    out = tmp_path / "resumed"
    broken = run_evaluation(config(out), judge(tmp_path / "resumed.sqlite"))
    failed = broken["results"][broken["settings"][0]["slug"]]["overall"]["failed_judgments"]
    assert failed["total"] == N_ITEMS * 3 - 7 and failed["by_reason"] == {"unparsable_reply": N_ITEMS * 3 - 7}
    assert "failed (unparsable_reply)" in (out / "index.html").read_text()

    # resumed with a healthy server: only the failed judgments are asked again, the result equals the reference
    server.responder = healthy
    server.reset_counters()
    resumed = run_evaluation(config(out), judge(tmp_path / "resumed.sqlite"))
    assert server.chat_count == N_ITEMS * 3 - 7
    assert resumed["results"] == reference["results"]


def test_evaluate_cli_reports_bad_input_with_exit_code_2(bench, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "real_edit_instruct.json").write_text(json.dumps({"astronaut.png": ["1. Zoom: zoom in"]}))
    Image.new("RGB", (8, 8)).save(bad / "astronaut.png")
    base = ["evaluate", "--model", "m", "--out", str(tmp_path / "o"), "--no-judge", *FAST]
    assert cli_main([*base, "--bench", str(bad)]) == 2
    assert "unknown edit type 'Zoom'" in capsys.readouterr().err
    assert cli_main([*base, "--bench", str(bench), "--scores", "5,5,9"]) == 2
    assert "`--scores` quality score must be a finite number in [0, 5], got 9.0" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judged = ["evaluate", "--model", "m", "--out", str(tmp_path / "o"), "--bench", str(bench)]
    assert cli_main(judged) == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_killed_during_judging_resumes_without_repeating_finished_calls(
    models, bench, tmp_path, openai_api_key
):
    argv = ["evaluate", "--bench", str(bench), "--model", models[0], "--base-url", "URL", "--concurrency", "2", *FAST]
    with OpenAIServer() as server:
        reference_argv = [*argv, "--out", str(tmp_path / "reference")]
        reference_argv[reference_argv.index("URL")] = server.base_url
        assert cli_main(reference_argv) == 0
        reference = json.loads((tmp_path / "reference" / "report.json").read_text())

    out = tmp_path / "killed"
    with OpenAIServer(latency=0.25) as server:
        run_argv = [*argv, "--out", str(out)]
        run_argv[run_argv.index("URL")] = server.base_url
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
        process = subprocess.Popen(
            [sys.executable, "-m", "reward_edit_pipeline", *run_argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        store_path = out / "judgments.sqlite"
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and process.poll() is None:
            if store_path.is_file():
                try:
                    with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as connection:
                        stored = connection.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
                except sqlite3.OperationalError:  # tables not created yet
                    stored = 0
                if stored >= 4:
                    break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
        calls_before_kill = server.chat_count
        assert calls_before_kill < N_ITEMS * 3 and not (out / "report.json").exists()

        assert cli_main(run_argv) == 0
        # the resumed run asks only for judgments not stored before the kill (at most the calls then in flight repeat)
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as connection:
            assert connection.execute("SELECT COUNT(*) FROM judgments WHERE status='done'").fetchone()[0] == N_ITEMS * 3
        assert N_ITEMS * 3 <= server.chat_count <= N_ITEMS * 3 + 2
        assert server.chat_count - calls_before_kill <= N_ITEMS * 3 - stored
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["results"] == reference["results"]
