"""`--batch` mode against the loopback server's /v1/files and /v1/batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_server import OpenAIServer
from PIL import Image

from reward_edit_pipeline.data import Triplet, store_rows
from reward_edit_pipeline.judge import AnnotationStore, OpenAIJudge, annotate
from reward_edit_pipeline.judge.batch import run_batch_annotation

pytestmark = pytest.mark.usefixtures("openai_api_key")


def make_items(tmp_path: Path, instructions: list[str]) -> list[Triplet]:
    items = []
    for index, instruction in enumerate(instructions):
        original, edited = tmp_path / f"{index}_0.png", tmp_path / f"{index}_1.png"
        Image.new("RGB", (20, 20), (index * 9, 0, 0)).save(original)
        Image.new("RGB", (20, 20), (0, index * 9, 0)).save(edited)
        items.append(Triplet(f"k{index}", instruction, original, edited))
    return items


def judgments_of(store_path: Path) -> dict:
    with AnnotationStore(store_path, readonly=True) as store:
        return {
            row["id"]: (row["scores"], row["verdicts"], row["failure_texts"], row["errors"])
            for row in store_rows(store)
        }


def test_batch_results_equal_the_online_engine_and_files_are_split(tmp_path):
    items = make_items(tmp_path, [f"edit {i}" for i in range(5)] + ["broken [[quality:garbage]]"])
    with OpenAIServer() as server:
        judge = OpenAIJudge(base_url=server.base_url)
        with AnnotationStore(tmp_path / "batch.sqlite") as store:
            summary = run_batch_annotation(
                items, judge, store, poll_interval=0.05, max_requests_per_file=4, progress=False
            )
        assert len(server.batches) == 5  # 18 requests split 4 per file
        assert all(b["endpoint"] == "/v1/chat/completions" for b in server.batches.values())
        assert summary.requests == 18 and summary.final_items_done == 5 and summary.final_items_failed == 1
        assert summary.prompt_tokens > 18 * 255  # every request carries at least one image
        # gpt-4o list prices, halved for the Batch API
        expected_cost = (summary.prompt_tokens * 2.50 + summary.completion_tokens * 10.00) / 1e6 * 0.5
        assert summary.cost_usd == pytest.approx(expected_cost)
        with AnnotationStore(tmp_path / "online.sqlite") as store:
            annotate(items, OpenAIJudge(base_url=server.base_url), store, progress=False)
        batch_lines = [
            json.loads(line)
            for path in sorted((tmp_path / "batch.sqlite.batches").glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]
    assert len(batch_lines) == 18 and len({line["custom_id"] for line in batch_lines}) == 18
    assert judgments_of(tmp_path / "batch.sqlite") == judgments_of(tmp_path / "online.sqlite")


def test_batch_splits_by_bytes_too(tmp_path):
    items = make_items(tmp_path, ["a", "b"])
    with OpenAIServer() as server, AnnotationStore(tmp_path / "s.sqlite") as store:
        run_batch_annotation(
            items,
            OpenAIJudge(base_url=server.base_url),
            store,
            poll_interval=0.05,
            max_bytes_per_file=6000,
            progress=False,
        )
        sizes = [entry["bytes"] for entry in server.files.values() if entry["purpose"] == "batch"]
        assert len(sizes) >= 3 and max(sizes) <= 6000
        with pytest.raises(ValueError, match="per-file limit"):
            run_batch_annotation(
                make_items(tmp_path, ["c"]),
                OpenAIJudge(base_url=server.base_url, model="m2"),
                store,
                max_bytes_per_file=100,
                progress=False,
            )


def test_errors_and_failed_batches_are_recorded_and_retried(tmp_path):
    items = make_items(tmp_path, ["ok", "err [[500]]", "other", "more"])
    with OpenAIServer(max_requests_per_batch_file=5) as server:
        judge = OpenAIJudge(base_url=server.base_url)
        with AnnotationStore(tmp_path / "s.sqlite") as store:
            # the client splits at 6 but the server accepts 5 per file: both batches fail as a whole
            summary = run_batch_annotation(
                items, judge, store, poll_interval=0.05, max_requests_per_file=6, progress=False
            )
            assert summary.final_failed_by_reason == {"batch_error": 12}
            assert "status 'failed'" in store.get("k0").judgments["following"].error_message
            summary = run_batch_annotation(
                items, judge, store, poll_interval=0.05, max_requests_per_file=5, progress=False
            )
            assert summary.final_items_done == 3 and summary.final_failed_by_reason == {"batch_error": 3}
            assert "HTTP 500" in store.get("k1").judgments["quality"].error_message


def test_interrupted_batch_run_resumes_polling_without_resubmitting(tmp_path):
    items = make_items(tmp_path, ["a", "b"])
    with OpenAIServer(batch_processing_seconds=0.2) as server:
        judge = OpenAIJudge(base_url=server.base_url)
        with AnnotationStore(tmp_path / "s.sqlite") as store:
            run_batch_annotation(items, judge, store, submit_only=True, progress=False)
            assert len(server.batches) == 1 and len(store.open_batches()) == 1
            assert store.get("k0").status == "pending"
        with AnnotationStore(tmp_path / "s.sqlite") as store:  # a new process would reopen the store like this
            summary = run_batch_annotation(items, judge, store, poll_interval=0.05, progress=False)
            assert len(server.batches) == 1 and summary.requests == 0  # nothing resubmitted
            assert summary.final_items_done == 2 and store.open_batches() == []
            calls = server.chat_count
            run_batch_annotation(items, judge, store, poll_interval=0.05, progress=False)
            assert server.chat_count == calls and len(server.batches) == 1


def test_batch_dry_run_estimates_at_batch_price(tmp_path):
    items = make_items(tmp_path, ["a"])
    with OpenAIServer() as server, AnnotationStore(tmp_path / "s.sqlite") as store:
        judge = OpenAIJudge(base_url=server.base_url)
        online = annotate(items, judge, store, dry_run=True, progress=False)
        batch = run_batch_annotation(items, judge, store, dry_run=True, progress=False)
        assert batch.calls_planned == 3 and not server.batches
        assert batch.estimated_cost_usd == pytest.approx(online.estimated_cost_usd / 2)
        with pytest.raises(ValueError, match="combined"):
            run_batch_annotation(items, OpenAIJudge(base_url=server.base_url, combined=True), store, progress=False)
