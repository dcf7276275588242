"""The reply parser: schema JSON, the tolerant fallbacks, and failures that keep the raw reply (never eval)."""

from __future__ import annotations

import pytest

from reward_edit_pipeline.judge.parsing import (
    ReplyParseError,
    combined_judgments_from_reply,
    extract_fields,
    judgment_from_reply,
    read_literal,
)


def test_schema_json_reply_gives_score_verdict_and_failure_text():
    judgment = judgment_from_reply("following", '{"score": 4.5, "verdict": "yes", "failure_text": "hat still red"}')
    assert judgment.ok and judgment.score == 4.5 and judgment.verdict == "yes"
    assert judgment.failure_text == "hat still red"
    assert judgment.raw_reply.startswith('{"score"')


@pytest.mark.parametrize(
    "reply, score, verdict",
    [
        ('```json\n{"score": 3, "verdict": "no", "failure_text": "x"}\n```', 3.0, "no"),
        ("```\n{'score': 2.5, 'verdict': 'no'}\n```", 2.5, "no"),
        ("{'following': 'yes', 'score': 4.5}", 4.5, "yes"),
        ('{"score": 5, "verdict": "yes", "failure_text": ""}', 5.0, "yes"),
        ('Sure! Here it is: {"score": 1, "verdict": "No"} Hope this helps.', 1.0, "no"),
        ("{'score': '4', 'verdict': True, 'failure_text': None,}", 4.0, "yes"),
        ("4", 4.0, None),
        ("Score: 3.5/5", 3.5, None),
        ('[{"score": 0, "verdict": "no", "failure_text": "nothing changed"}]', 0.0, "no"),
        ('{"Score": 2, "Negative Prompt": "blurry face"}', 2.0, None),
    ],
)
def test_fallback_forms_parse_to_the_same_fields(reply, score, verdict):
    judgment = judgment_from_reply("following", reply)
    assert judgment.ok, judgment.error_message
    assert judgment.score == score and judgment.verdict == verdict


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("", "empty_reply"),
        ("   \n", "empty_reply"),
        (None, "empty_reply"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("The edit looks good to me.", "unparsable_reply"),
        ('{"score": 7.5, "verdict": "yes"}', "score_out_of_range"),
        ('{"score": -1}', "score_out_of_range"),
        ('{"score": "high"}', "invalid_score"),
        ('{"score": true}', "invalid_score"),
        ('{"score": NaN}', "score_out_of_range"),
        ('{"verdict": "yes", "failure_text": ""}', "missing_score"),
        ('{"score": 3, "verdict": "maybe"}', "invalid_verdict"),
        ("{'score': 3, 'verdict': 'yes'", "unparsable_reply"),
    ],
)
def test_bad_replies_are_failures_with_reason_and_raw_reply(reply, reason):
    judgment = judgment_from_reply("quality", reply)
    assert not judgment.ok
    assert judgment.error == reason
    assert judgment.score is None and judgment.verdict is None
    assert judgment.raw_reply == reply


def test_python_expressions_are_never_evaluated():
    # a reply smuggling code must not run; it is simply unparsable
    reply = "{'score': __import__('os').system('echo pwned')}"
    judgment = judgment_from_reply("following", reply)
    assert not judgment.ok and judgment.error == "unparsable_reply"
    with pytest.raises(ValueError):
        read_literal("(1).__class__")


def test_literal_reader_handles_quotes_escapes_and_constants():
    value = read_literal("{'a': \"it's\", 'b': [1, 2.5, -3e1], 'c': None, 'd': false, 'e': 'tab\\t', }")
    assert value == {"a": "it's", "b": [1, 2.5, -30.0], "c": None, "d": False, "e": "tab\t"}


def test_failure_text_list_is_joined_with_semicolons():
    judgment = judgment_from_reply(
        "preserving", '{"score": 2, "verdict": "no", "failure_text": ["face changed", "sky"]}'
    )
    assert judgment.failure_text == "face changed; sky"


def test_combined_reply_splits_per_perspective_and_flags_a_missing_section():
    reply = '{"following": {"score": 4, "verdict": "yes", "failure_text": ""}, "quality": {"score": 9}}'
    following, preserving, quality = combined_judgments_from_reply(("following", "preserving", "quality"), reply)
    assert following.ok and following.score == 4
    assert preserving.error == "unparsable_reply"
    assert quality.error == "score_out_of_range"


def test_extract_fields_raises_with_reason_code():
    with pytest.raises(ReplyParseError) as info:
        extract_fields("no json here")
    assert info.value.reason == "unparsable_reply"
