"""OpenAIJudge against a real loopback HTTP server speaking the chat-completions protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from openai_server import HTTPError, OpenAIServer, Reply, deterministic_judgment
from PIL import Image

from reward_edit_pipeline.judge import FunctionJudge, OpenAIJudge, parse_retry_after

pytestmark = pytest.mark.usefixtures("openai_api_key")

ORIGINAL = Image.new("RGB", (64, 48), (200, 20, 20))
EDITED = Image.new("RGB", (64, 48), (20, 200, 20))


@pytest.fixture
def server():
    with OpenAIServer(retry_after="0.3", slow_seconds=1.0) as running:
        yield running


def make_judge(server, **kwargs):
    options = {"timeout": 0.4, "max_retries": 2, "backoff_base": 0.02, "backoff_max": 0.1}
    options.update(kwargs)
    return OpenAIJudge(base_url=server.base_url, **options)


def test_request_carries_prompt_images_schema_temperature_and_seed(server):
    result = make_judge(server).judge("make the car blue", ORIGINAL, EDITED)
    assert result.ok
    bodies = {request.perspective: request.body for request in server.chat_requests}
    assert set(bodies) == {"following", "preserving", "quality"}  # one request per perspective
    for perspective, body in bodies.items():
        assert body["model"] == "gpt-4o" and body["temperature"] == 0 and body["seed"] == 0
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["required"] == ["score", "verdict", "failure_text"]
        images = [p for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
        assert len(images) == (1 if perspective == "quality" else 2)
        assert images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert "make the car blue" in json.dumps(body["messages"])


def test_result_records_snapshot_prompt_ids_usage_and_order(server):
    result = make_judge(server).judge("make the car blue", ORIGINAL, EDITED)
    assert [j.perspective for j in result.judgments] == ["following", "preserving", "quality"]
    assert result.model == "gpt-4o-2024-08-06"
    assert result.prompt_ids == {"following": "following-v1", "preserving": "preserving-v1", "quality": "quality-v1"}
    for judgment in result.judgments:
        # the usage the loopback server reported for this perspective's request (its formula, see openai_server.py)
        (request,) = [r for r in server.chat_requests if r.perspective == judgment.perspective]
        assert judgment.prompt_tokens == len(request.text) // 4 + 255 * len(request.images)
        assert judgment.completion_tokens == len(judgment.raw_reply) // 4 + 1
        assert 0 <= judgment.score <= 5 and judgment.verdict in ("yes", "no")
        assert json.loads(judgment.raw_reply)["score"] == judgment.score


@pytest.mark.parametrize(
    "directive, reason",
    [
        ("out_of_range", "score_out_of_range"),
        ("refusal", "refusal"),
        ("refusal_text", "refusal"),
        ("empty", "empty_reply"),
        ("garbage", "unparsable_reply"),
        ("length", "truncated_reply"),
        ("400", "http_error"),
    ],
)
def test_bad_replies_become_failures_with_reason_without_retry(server, directive, reason):
    judgment = make_judge(server).judge(f"edit [[{directive}]]", ORIGINAL, EDITED, perspectives=["following"])[
        "following"
    ]
    assert not judgment.ok and judgment.error == reason and judgment.score is None
    assert judgment.attempts == 1 and server.chat_count == 1


@pytest.mark.parametrize("directive", ["fence", "pydict", "int", "prose"])
def test_schema_less_replies_parse_to_the_servers_scores(server, directive):
    result = make_judge(server).judge(f"paint it [[{directive}]]", ORIGINAL, EDITED)
    assert result.ok
    for request in server.chat_requests:
        expected = deterministic_judgment(request, request.perspective)
        judgment = result[request.perspective]
        assert judgment.score == (float(int(expected["score"])) if directive == "int" else expected["score"])
        assert judgment.verdict == expected["verdict"]
        assert judgment.failure_text == ("" if directive == "pydict" else expected["failure_text"])


@pytest.mark.parametrize(
    "directive, reason",
    [
        ("500x9", "server_error"),
        ("429x9", "rate_limited"),
        ("reset", "connection_error"),
        ("malformed", "malformed_response"),
        ("slowx9", "timeout"),
    ],
)
def test_transient_faults_are_retried_then_recorded(server, directive, reason):
    server.retry_after = "0"
    judgment = make_judge(server).judge(f"edit [[{directive}]]", ORIGINAL, EDITED, perspectives=["quality"])["quality"]
    assert not judgment.ok and judgment.error == reason
    assert judgment.attempts == 3 and server.chat_count == 3  # first try + max_retries=2


@pytest.mark.parametrize("directive", ["500x2", "503x1", "resetx2", "slowx1", "malformedx1", "429x2"])
def test_transient_faults_recover_within_the_retry_budget(server, directive):
    server.retry_after = "0"
    judgment = make_judge(server).judge(f"edit [[{directive}]]", ORIGINAL, EDITED, perspectives=["quality"])["quality"]
    assert judgment.ok, judgment.error_message


def test_retry_after_is_honoured(server):
    server.retry_after = "0.6"
    started = time.monotonic()
    judgment = make_judge(server).judge("edit [[429x1]]", ORIGINAL, EDITED, perspectives=["following"])["following"]
    elapsed = time.monotonic() - started
    assert judgment.ok and judgment.attempts == 2
    first, second = server.chat_requests
    assert second.received_at - first.received_at >= 0.6
    assert elapsed >= 0.6


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None


def test_missing_and_corrupt_images_fail_only_the_perspectives_that_see_them(server, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    result = make_judge(server).judge("edit", tmp_path / "missing.jpg", EDITED)
    assert [j.error for j in result.judgments] == ["image_missing", "image_missing", None]  # quality sees edited only
    assert "missing.jpg" in result["following"].error_message
    corrupt = make_judge(server).judge("edit", ORIGINAL, bad)
    assert [j.error for j in corrupt.judgments] == ["image_corrupt"] * 3
    assert server.chat_count == 1


def test_combined_prompt_makes_one_request_for_three_judgments(server):
    result = make_judge(server, combined=True).judge("make it snow", ORIGINAL, EDITED)
    assert result.ok and server.chat_count == 1
    assert set(result.prompt_ids.values()) == {"combined-v1"}
    properties = server.chat_requests[0].body["response_format"]["json_schema"]["schema"]["properties"]
    assert list(properties) == ["following", "preserving", "quality"]


def test_structured_output_none_sends_no_response_format(server):
    assert make_judge(server, structured_output="none").judge("x", ORIGINAL, EDITED).ok
    assert all("response_format" not in r.body for r in server.chat_requests)


def test_settings_change_the_fingerprint_but_base_url_does_not(server):
    base = make_judge(server).fingerprint("following")
    assert make_judge(server, model="gpt-4o-mini").fingerprint("following") != base
    assert make_judge(server, image_max_side=256).fingerprint("following") != base
    assert OpenAIJudge(base_url="http://elsewhere/v1").fingerprint("following") == base
    assert make_judge(server).fingerprint("quality") != base


def test_api_key_comes_from_the_named_env_var_and_is_never_logged(server, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        make_judge(server).judge("x", ORIGINAL, EDITED)
    monkeypatch.setenv("MY_KEY", "sk-very-secret")
    caplog.set_level(logging.DEBUG)
    judge = make_judge(server, api_key_env="MY_KEY")
    assert judge.judge("x [[500x9]]", ORIGINAL, EDITED, perspectives=["following"])["following"].error == "server_error"
    assert "sk-very-secret" not in caplog.text and "sk-very-secret" not in repr(judge.__dict__)


def test_sync_judge_works_inside_a_running_event_loop(server):
    judge = make_judge(server)

    async def inside_loop():
        return judge.judge("x", ORIGINAL, EDITED)

    assert asyncio.run(inside_loop()).ok


def test_custom_responder_and_invalid_arguments(server):
    server.responder = lambda request: Reply('{"score": 2, "verdict": "no", "failure_text": "the dog is missing"}')
    result = make_judge(server).judge("add a dog", ORIGINAL, EDITED)
    assert result.failure_texts == ("the dog is missing",) * 3
    assert result.failure_text == "the dog is missing; the dog is missing; the dog is missing"
    server.responder = lambda request: HTTPError(401, "bad key")
    assert make_judge(server).judge("x", ORIGINAL, EDITED).judgments[0].error == "http_error"
    with pytest.raises(ValueError, match="image_detail"):
        OpenAIJudge(image_detail="ultra")
    with pytest.raises(ValueError, match="temperature"):
        OpenAIJudge(temperature=3)


def test_function_judge_records_exceptions_and_out_of_range_scores():
    def grade(perspective, instruction, original, edited):
        assert original.mode == "RGB"
        if perspective == "preserving":
            raise RuntimeError("boom")
        return (9.0 if perspective == "quality" else 4.0), "yes", ""

    result = FunctionJudge(grade).judge("x", ORIGINAL, EDITED)
    assert [j.error for j in result.judgments] == [None, "judge_error", "score_out_of_range"]
    assert "boom" in result["preserving"].error_message


def test_azure_openai_is_reached_through_its_deployment_path(server):
    judge = OpenAIJudge(base_url=server.base_url.removesuffix("/v1"), azure_api_version="2024-10-21", model="my-gpt4o")
    assert judge.judge("x", ORIGINAL, EDITED, perspectives=["quality"]).ok
    assert server.chat_requests[0].path.startswith("/openai/deployments/my-gpt4o/chat/completions?api-version=")


def test_importing_the_judge_loads_neither_torch_nor_diffusers():
    import subprocess
    import sys

    code = (
        "import sys, reward_edit_pipeline.judge, reward_edit_pipeline.data;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
