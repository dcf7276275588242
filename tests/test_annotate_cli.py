"""`reward-edit annotate/export/import-official` end to end, including kill -9 and resume."""

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
from openai_server import OpenAIServer
from PIL import Image

from reward_edit_pipeline.cli import main
from reward_edit_pipeline.data import load_reward_records, store_rows
from reward_edit_pipeline.judge import AnnotationStore

pytestmark = pytest.mark.usefixtures("openai_api_key")

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_ip2p_folder(root: Path, count: int, directives: dict[int, str] | None = None) -> Path:
    """An InstructPix2Pix clip-filtered folder with ``count`` keys (one seed pair each) and a seeds.json."""
    seeds = []
    for index in range(count):
        key = f"{index:07d}"
        folder = root / key
        folder.mkdir(parents=True)
        seed = 1000 + index
        Image.new("RGB", (32, 24), (index * 7 % 256, 10, 10)).save(folder / f"{seed}_0.jpg")
        Image.new("RGB", (32, 24), (10, index * 7 % 256, 10)).save(folder / f"{seed}_1.jpg")
        instruction = f"turn item {index} blue {(directives or {}).get(index, '')}".strip()
        (folder / "prompt.json").write_text(json.dumps({"input": "a photo", "edit": instruction}))
        seeds.append([key, [seed]])
    (root / "seeds.json").write_text(json.dumps(seeds))
    return root


def store_snapshot(path: Path) -> list[dict]:
    with AnnotationStore(path, readonly=True) as store:
        return list(store_rows(store))


def judgment_count(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def annotate_args(data: Path, store: Path, server: OpenAIServer, *extra: str) -> list[str]:
    return [
        "annotate",
        "--input",
        str(data),
        "--store",
        str(store),
        "--base-url",
        server.base_url,
        "--no-progress",
        "--timeout",
        "2",
        "--max-retries",
        "2",
        *extra,
    ]


def test_annotate_export_import_round_trip(tmp_path, capsys):
    data = write_ip2p_folder(tmp_path / "ip2p", 4, {2: "[[quality:refusal]]"})
    store = tmp_path / "store.sqlite"
    with OpenAIServer() as server:
        assert main(annotate_args(data, store, server, "--dry-run")) == 0
        assert "12 calls to make" in capsys.readouterr().out and server.chat_count == 0
        assert main(annotate_args(data, store, server)) == 1  # one item has a failed perspective
        output = capsys.readouterr().out
        assert "refusal: 1" in output and "3 done, 1 with failures" in output
    official = tmp_path / "rewards.json"
    assert main(["export", "--store", str(store), "--format", "official-json", "-o", str(official)]) == 0
    data_json = json.loads(official.read_text())
    assert sorted(data_json) == ["0000000", "0000001", "0000003"]  # keys are the folder names
    assert [set(entry) for entry in data_json["0000000"]] == [{"Score", "Negative Prompt"}] * 3
    for export_format, name in (("jsonl", "r.jsonl"), ("parquet", "r.parquet"), ("hf-dataset", "r_ds")):
        assert main(["export", "--store", str(store), "--format", export_format, "-o", str(tmp_path / name)]) == 0
        assert load_reward_records(tmp_path / name) == load_reward_records(official)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [row["status"] for row in rows] == ["done", "done", "failed", "done"]
    assert rows[2]["errors"] == [None, None, "refusal"] and rows[2]["raw_replies"][2]
    imported = tmp_path / "imported.sqlite"
    assert main(["import-official", str(official), "--images", str(data), "--store", str(imported)]) == 0
    assert load_reward_records(imported) == load_reward_records(official)
    with AnnotationStore(imported, readonly=True) as store_view:
        assert store_view.get("0000001").instruction == "turn item 1 blue"
        assert store_view.get("0000001").original.endswith("1001_0.jpg")


def test_cli_rejects_bad_arguments_and_a_missing_key(tmp_path, monkeypatch, capsys):
    data = write_ip2p_folder(tmp_path / "ip2p", 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", "--input", str(data), "--store", str(tmp_path / "s.sqlite"), "--concurrency", "0"])
    assert exit_info.value.code == 2 and "--concurrency" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["annotate", "--input", str(data), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    assert (
        main(["annotate", "--input", str(tmp_path / "nowhere"), "--store", str(tmp_path / "s.sqlite"), "--dry-run"])
        == 2
    )
    assert main(["export", "--store", str(tmp_path / "none.sqlite"), "--format", "jsonl", "-o", "x"]) == 2


def _start_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OPENAI_API_KEY="sk-test", PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "reward_edit_pipeline", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_sigkill_and_resume_yields_the_same_store_as_an_uninterrupted_run(tmp_path):
    directives = {3: "[[garbage]]", 5: "[[500x1]]", 7: "[[following:out_of_range]]", 9: "[[resetx1]]"}
    data = write_ip2p_folder(tmp_path / "ip2p", 24, directives)
    killed_store, clean_store = tmp_path / "killed.sqlite", tmp_path / "clean.sqlite"
    with OpenAIServer(latency=0.08, retry_after="0") as server:
        args = annotate_args(data, killed_store, server, "--concurrency", "4")
        for kill_after in (8, 30):  # kill -9 twice, at different points of the run
            process = _start_cli(args)
            deadline = time.monotonic() + 60
            while judgment_count(killed_store) < kill_after and process.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.01)
            assert process.poll() is None, "the run finished before it could be killed"
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            assert process.returncode == -signal.SIGKILL
            assert judgment_count(killed_store) < 72
        resumed = _start_cli(args)
        resumed.communicate(timeout=120)
        assert resumed.returncode == 1  # items 3 and 7 fail for good
        calls_before_rerun = server.chat_count
        rerun = _start_cli(args)
        rerun.communicate(timeout=120)
        # the re-run asks again only the failed judgments (3 of item 3, 1 of item 7)
        assert server.chat_count - calls_before_rerun == 4
    with OpenAIServer(latency=0.0, retry_after="0") as server:
        clean = _start_cli(annotate_args(data, clean_store, server, "--concurrency", "4"))
        clean.communicate(timeout=120)
        assert clean.returncode == 1
    killed_rows, clean_rows = store_snapshot(killed_store), store_snapshot(clean_store)
    assert [row["id"] for row in killed_rows] == [f"{i:07d}" for i in range(24)]  # none lost or duplicated
    assert killed_rows == clean_rows
    statuses = {row["id"]: row["status"] for row in killed_rows}
    assert statuses["0000003"] == statuses["0000007"] == "failed"
    assert sum(status == "done" for status in statuses.values()) == 22
