"""Reward records: the official JSON format, validation, and the conventions of the failure text."""

from __future__ import annotations

import json

import pytest

from reward_edit_pipeline.data import RewardRecord, load_reward_records, parse_official_json
from reward_edit_pipeline.rewards import PERSPECTIVES

OFFICIAL = {
    "0000011": [
        {"Score": 4.5, "Negative Prompt": "the hat is still red"},
        {"Score": 5, "Negative Prompt": "There are no noticeable negative aspects."},
        {"Score": 3.0, "Negative Prompt": ""},
    ]
}


def test_official_json_loads_in_perspective_order(tmp_path):
    (tmp_path / "RewardEdit_20K.json").write_text(json.dumps(OFFICIAL))
    record = load_reward_records(tmp_path / "RewardEdit_20K.json")["0000011"]
    assert record.scores == (4.5, 5.0, 3.0)
    assert record.failure_texts[0] == "the hat is still red"
    assert record.failure_text == "the hat is still red; There are no noticeable negative aspects.; None"
    assert load_reward_records(OFFICIAL) == {"0000011": record}  # an already-loaded mapping


@pytest.mark.parametrize(
    "entry, message",
    [
        ([{"Score": 1, "Negative Prompt": ""}] * 2, "list of 3 entries"),
        ([{"Score": 7, "Negative Prompt": ""}] * 3, r"\[0, 5\]"),
        ([{"Score": "4", "Negative Prompt": ""}] * 3, "must be a number"),
        ([{"Negative Prompt": ""}] * 3, "lacks 'Score'"),
        ([{"Score": 1, "Negative Prompt": 3}] * 3, "must be a string"),
    ],
)
def test_invalid_official_entries_raise_naming_the_key(entry, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_official_json({"k9": entry})
    assert "k9" in str(info.value)


def test_reward_record_validates_and_never_clamps():
    with pytest.raises(ValueError, match="scores"):
        RewardRecord(scores=(5.5, 1, 1), failure_texts=("", "", ""))
    with pytest.raises(ValueError, match="failure_texts"):
        RewardRecord(scores=(1, 1, 1), failure_texts=("a", "b"))
    assert RewardRecord(scores=(5, 5, 5), failure_texts=("", "", "")).failure_text == "None; None; None"


def test_unknown_formats_are_rejected(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown reward-record format"):
        load_reward_records(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_reward_records(tmp_path / "none.json")
    with pytest.raises(ValueError, match="on_incomplete"):
        load_reward_records(OFFICIAL, on_incomplete="ignore")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{oops", r"rows\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"rows\.jsonl:2: expected an export row object, got a list"),
    ],
)
def test_a_bad_jsonl_line_is_an_error_naming_file_and_line(tmp_path, line, message):
    good = {"id": "a", "status": "done", "scores": [5, 4, 3], "failure_texts": ["", "None", "x"]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n\n")
    with pytest.raises(ValueError, match=message):
        load_reward_records(path)
    path.write_text(json.dumps(good) + "\n\n")  # blank lines are allowed
    assert load_reward_records(path) == {
        "a": RewardRecord(scores=(5, 4, 3), failure_texts=("", "", "x"), item_id="a")
    }  # "None" is the official spelling of "nothing to report": read as ""


def test_reward_record_is_one_typed_value_with_named_scores_and_the_joined_text():
    record = RewardRecord(scores=(4.5, 5, 0), failure_texts=("the hat is still red", "", " "), item_id="0000011")
    assert (record.following, record.preserving, record.quality) == (4.5, 5.0, 0.0)
    assert record.failure_text_of("following") == "the hat is still red"
    assert record.failure_text == "the hat is still red; None; None"  # a blank text is "nothing to report"
    with pytest.raises(ValueError, match="perspective"):
        record.failure_text_of("style")
    with pytest.raises(TypeError, match="positional"):
        RewardRecord((5, 5, 5), ("", "", ""))  # keyword-only: scores and texts cannot be swapped by position
    with pytest.raises(ValueError, match="failure_texts"):
        RewardRecord(scores=(5, 5, 5), failure_texts="blurry")  # one string is not three texts
    with pytest.raises(TypeError, match="item_id"):
        RewardRecord(scores=(5, 5, 5), item_id=7)


def test_the_store_reads_back_reward_records_only_for_complete_items(annotation_store):
    from reward_edit_pipeline.judge import PerspectiveJudgment

    annotation_store.put_items(
        [
            {"item_id": item, "instruction": "x", "call_keys": {p: f"{item}-{p}" for p in PERSPECTIVES}}
            for item in ("done", "half")
        ]
    )
    for perspective, score in zip(PERSPECTIVES, (4, 5, 3)):
        text = "blurry" if perspective == "quality" else ""
        judgment = PerspectiveJudgment.success(perspective, score, None, text)
        annotation_store.record(f"done-{perspective}", "done", judgment)
    annotation_store.record("half-following", "half", PerspectiveJudgment.success("following", 5, None))
    assert annotation_store.get("done").reward_record == RewardRecord(
        scores=(4, 5, 3), failure_texts=("", "", "blurry"), item_id="done"
    )
    assert annotation_store.get("half").reward_record is None  # pending perspectives: no record
