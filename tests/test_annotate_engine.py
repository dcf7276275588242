"""The annotation engine against the loopback server: outcomes, resumption, caching, limits, dry runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from openai_server import OpenAIServer
from PIL import Image

from reward_edit_pipeline.data import Triplet, iter_triplets, load_reward_records
from reward_edit_pipeline.judge import AnnotationStore, FunctionJudge, OpenAIJudge, annotate

pytestmark = pytest.mark.usefixtures("openai_api_key")

# instruction directive -> the reason every perspective of that item must end with (None = done)
FAULTS = {
    "": None,
    "[[429x1]]": None,
    "[[500x1]]": None,
    "[[resetx1]]": None,
    "[[slowx1]]": None,
    "[[malformedx1]]": None,
    "[[fence]]": None,
    "[[pydict]]": None,
    "[[int]]": None,
    "[[500]]": "server_error",
    "[[429]]": "rate_limited",
    "[[400]]": "http_error",
    "[[length]]": "truncated_reply",
    "[[slow]]": "timeout",
    "[[reset]]": "connection_error",
    "[[malformed]]": "malformed_response",
    "[[out_of_range]]": "score_out_of_range",
    "[[refusal]]": "refusal",
    "[[garbage]]": "unparsable_reply",
    "[[empty]]": "empty_reply",
}


def write_items(folder: Path, instructions: list[str]) -> Path:
    """A JSONL manifest with one tiny distinct image pair per instruction."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, instruction in enumerate(instructions):
        original, edited = folder / f"{index}_0.png", folder / f"{index}_1.png"
        Image.new("RGB", (24, 16), (index % 256, 40, 90)).save(original)
        Image.new("RGB", (24, 16), (90, index % 256, 40)).save(edited)
        lines.append(
            json.dumps(
                {"id": f"item{index:03d}", "original": original.name, "edited": edited.name, "instruction": instruction}
            )
        )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def server():
    with OpenAIServer(retry_after="0", slow_seconds=0.8) as running:
        yield running


def fast_judge(server, **kwargs):
    options = {"timeout": 0.4, "max_retries": 1, "backoff_base": 0.01, "backoff_max": 0.05}
    options.update(kwargs)
    return OpenAIJudge(base_url=server.base_url, **options)


def test_every_item_ends_done_or_failed_with_the_right_reason(server, tmp_path):
    instructions = [f"edit {i} {directive}" for i, directive in enumerate(FAULTS)]
    items = list(iter_triplets(write_items(tmp_path / "data", instructions)))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        summary = annotate(items, fast_judge(server), store, concurrency=8, progress=False)
        stored = {item.item_id: item for item in store.iter_items()}
    assert sorted(stored) == sorted(t.id for t in items)  # none lost, none duplicated
    for triplet, expected in zip(items, FAULTS.values()):
        item = stored[triplet.id]
        assert set(item.judgments) == {"following", "preserving", "quality"}
        errors = {j.error for j in item.judgments.values()}
        assert errors == {expected}, (triplet.instruction, errors)
        for judgment in item.judgments.values():
            assert judgment.raw_reply is not None or not judgment.ok or judgment.error
    failures = sum(1 for reason in FAULTS.values() if reason)
    assert summary.final_items_done == len(FAULTS) - failures
    assert summary.final_items_failed == failures
    assert sum(summary.final_failed_by_reason.values()) == 3 * failures
    assert summary.judged_ok + summary.judged_failed == 3 * len(FAULTS)


def test_rerun_makes_zero_calls_and_failed_items_are_retried(server, tmp_path):
    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b", "c [[garbage]]"])))
    judge = fast_judge(server)
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        annotate(items, judge, store, progress=False)
        first_calls = server.chat_count
        assert first_calls == 9
        summary = annotate(items, judge, store, progress=False)
        assert server.chat_count == first_calls + 3  # only the failed item is asked again
        assert summary.cached == 6 and summary.final_items_failed == 1
        server.responder = lambda request: __import__("openai_server").Reply(
            '{"score": 3, "verdict": "yes", "failure_text": ""}'
        )
        summary = annotate(items, judge, store, progress=False)
        assert summary.final_items_done == 3 and store.get("item002").status == "done"
        calls = server.chat_count
        summary = annotate(items, judge, store, progress=False)
        assert server.chat_count == calls and summary.calls_planned == 0  # nothing left: zero calls


def test_prompt_change_invalidates_only_the_perspective_it_touches(server, tmp_path):
    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b"])))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        annotate(items, fast_judge(server), store, progress=False)
        server.reset_counters()
        changed = fast_judge(server)
        prompt = changed.prompts["quality"]
        changed.prompts["quality"] = type(prompt)(
            "quality-v2", prompt.perspective, prompt.images, prompt.system, prompt.user + " Be strict.", "changed"
        )
        annotate(items, changed, store, progress=False)
        assert server.chat_count == 2 and {r.perspective for r in server.chat_requests} == {"quality"}
        assert store.get("item000").judgments["quality"].prompt_id == "quality-v2"
        assert store.get("item000").judgments["following"].prompt_id == "following-v1"


def test_changed_image_bytes_invalidate_that_item_only(server, tmp_path):
    manifest = write_items(tmp_path / "data", ["a", "b"])
    items = list(iter_triplets(manifest))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        annotate(items, fast_judge(server), store, progress=False)
        server.reset_counters()
        Image.new("RGB", (24, 16), (1, 2, 3)).save(tmp_path / "data" / "1_0.png")  # item001's original
        annotate(list(iter_triplets(manifest)), fast_judge(server), store, progress=False)
        # quality sees only the edited image, so only following and preserving of item001 are redone
        assert sorted(r.perspective for r in server.chat_requests) == ["following", "preserving"]


def test_concurrency_bound_is_respected(server, tmp_path):
    server.latency = 0.05
    items = list(iter_triplets(write_items(tmp_path / "data", [f"i{i}" for i in range(12)])))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        summary = annotate(items, fast_judge(server, timeout=5), store, concurrency=5, progress=False)
    assert server.peak_concurrency <= 5 and summary.peak_in_flight <= 5
    assert server.peak_concurrency >= 3  # and it is actually used


def test_rpm_limit_spaces_requests(server, tmp_path):
    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b"])))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        annotate(items, fast_judge(server), store, concurrency=8, rpm=120, progress=False)  # 2 requests/s
    times = sorted(r.received_at for r in server.chat_requests)
    assert len(times) == 6
    assert 1.7 <= times[-1] - times[0] <= 4.0  # 2 at once (one second's burst), then 4 more at 0.5 s intervals


def test_tpm_limit_spaces_requests_by_estimated_tokens(server, tmp_path):
    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b"])))
    judge = fast_judge(server, max_tokens=50)
    prompt_tokens, _ = judge.estimate_call("following", {"original": (24, 16), "edited": (24, 16)}, "a")
    per_call = prompt_tokens + 50
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        annotate(items, judge, store, concurrency=8, tpm=per_call * 2 * 60, progress=False)  # 2 calls' tokens/s
    times = sorted(r.received_at for r in server.chat_requests)
    assert len(times) == 6 and 1.5 <= times[-1] - times[0] <= 4.5


def test_token_bucket_waits_when_empty():
    import asyncio

    from reward_edit_pipeline.judge.limits import CallLimiter

    async def run():
        limiter = CallLimiter(concurrency=4, rpm=120)  # 2 requests/s
        limiter._requests.available = 0.0
        started = time.monotonic()
        for _ in range(3):
            async with limiter.slot():
                pass
        return time.monotonic() - started

    assert 1.3 <= asyncio.run(run()) <= 3.0  # 3 requests at 2/s from an empty bucket
    with pytest.raises(ValueError, match="rpm"):
        CallLimiter(rpm=0)


def test_dry_run_counts_calls_and_cost_without_calling_or_writing(server, tmp_path):
    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b", "c"])))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        summary = annotate(items, fast_judge(server), store, dry_run=True, progress=False)
        assert server.chat_count == 0 and len(store) == 0
        assert summary.calls_planned == 9 and summary.estimated_prompt_tokens > 9 * 85
        expected_cost = (summary.estimated_prompt_tokens * 2.50 + summary.estimated_completion_tokens * 10.00) / 1e6
        assert summary.estimated_cost_usd == pytest.approx(expected_cost)  # gpt-4o list prices per million tokens
        assert "9 calls" in summary.format()
        combined = annotate(items, fast_judge(server, combined=True), store, dry_run=True, progress=False)
        assert combined.calls_planned == 3


def test_results_read_back_by_item_key_and_into_reward_records(server, tmp_path):
    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b [[quality:garbage]]"])))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        annotate(items, fast_judge(server), store, progress=False)
        done, failed = store.get("item000"), store.get("item001")
        assert done.status == "done" and failed.status == "failed"
        assert failed.judgments["quality"].error == "unparsable_reply"
        assert failed.judgments["following"].ok
        assert store.get("nope") is None
    records = load_reward_records(tmp_path / "store.sqlite")
    assert list(records) == ["item000"]
    assert records["item000"].scores == done.scores
    with pytest.raises(ValueError, match="item001"):
        load_reward_records(tmp_path / "store.sqlite", on_incomplete="error")


def test_programmatic_judge_plugs_into_the_engine(tmp_path):
    items = [
        Triplet(f"s{i}", f"make {i}", Image.new("RGB", (8, 8), (i, 0, 0)), Image.new("RGB", (8, 8), (0, i, 0)))
        for i in range(4)
    ]
    calls = []

    def grade(perspective, instruction, original, edited):
        calls.append((perspective, instruction))
        return 5.0, "yes", ""

    with AnnotationStore(tmp_path / "store.sqlite") as store:
        summary = annotate(items, FunctionJudge(grade, name="synthetic"), store, progress=False)
        assert summary.final_items_done == 4 and len(calls) == 12
        annotate(items, FunctionJudge(grade, name="synthetic"), store, progress=False)
        assert len(calls) == 12
        annotate(items, FunctionJudge(grade, name="synthetic", version="2"), store, progress=False)
        assert len(calls) == 24


def test_duplicate_ids_and_bad_concurrency_are_rejected(tmp_path):
    item = Triplet("same", "x", Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4)))
    judge = FunctionJudge(lambda *args: (1.0, "no", "x"))
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(ValueError, match="duplicate item id 'same'"):
            annotate([item, item], judge, store, progress=False)
        with pytest.raises(ValueError, match="concurrency"):
            annotate([item], judge, store, concurrency=0, progress=False)


def test_a_missing_api_key_stops_the_run_instead_of_failing_every_item(server, tmp_path, monkeypatch):
    from reward_edit_pipeline.judge import JudgeConfigurationError

    items = list(iter_triplets(write_items(tmp_path / "data", ["a", "b"])))
    monkeypatch.delenv("OPENAI_API_KEY")
    with AnnotationStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(JudgeConfigurationError, match="OPENAI_API_KEY"):
            annotate(items, fast_judge(server), store, progress=False)
        assert store.counts()["failed"] == 0 and server.chat_count == 0


def test_store_paths_with_uri_characters_open_read_only(tmp_path):
    path = tmp_path / "odd name #1?.sqlite"
    judge = FunctionJudge(lambda *args: (2.0, "no", "x"))
    item = Triplet("a", "x", Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4)))
    with AnnotationStore(path) as store:
        annotate([item], judge, store, progress=False)
    with AnnotationStore(path, readonly=True) as store:
        assert store.get("a").scores == (2.0, 2.0, 2.0)
        with pytest.raises(PermissionError):
            store.record("k", "a", store.get("a").judgments["following"])
    assert load_reward_records(path)["a"].failure_text == "x; x; x"
