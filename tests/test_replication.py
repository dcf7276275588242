"""The replication experiment's world, flaw model and exact judge, and a smoke run of the whole experiment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `experiments/` lives at the repository root

from experiments.replication.flaws import FlawConfig, apply_flaws, following_kinds
from experiments.replication.judge import WorldRegistry, judge_arrays, make_exact_judge
from experiments.replication.world import EDIT_TYPES, generate_samples

PERSPECTIVES = ("following", "preserving", "quality")


@pytest.fixture(scope="module")
def samples():
    return generate_samples(70, seed=7)


def _scores(sample, image):
    return np.array([m.score for m in judge_arrays(sample, image).values()])


def test_world_is_deterministic_and_covers_all_seven_edit_types(samples):
    again = generate_samples(70, seed=7)
    assert [s.edit.instruction for s in samples] == [s.edit.instruction for s in again]
    assert all(np.array_equal(a.result.target, b.result.target) for a, b in zip(samples, again))
    assert {s.edit.edit_type for s in samples} == set(EDIT_TYPES)
    for sample in samples:  # every instruction changes something, inside its edit mask only
        assert sample.result.edit_mask.any()
        difference = np.abs(sample.result.target.astype(int) - sample.result.original.astype(int)).max(-1)
        assert (difference[~sample.result.edit_mask] <= 0.15 * 255).all()


def test_clean_target_scores_5_5_5_with_empty_failure_texts(samples):
    for sample in samples:
        judgments = judge_arrays(sample, sample.result.target)
        assert [judgments[p].score for p in PERSPECTIVES] == [5.0, 5.0, 5.0], sample.edit.instruction
        assert [judgments[p].verdict for p in PERSPECTIVES] == ["yes", "yes", "yes"]
        assert [judgments[p].failure_text for p in PERSPECTIVES] == ["", "", ""]


def test_unedited_original_fails_following_and_names_the_edit(samples):
    for sample in samples:
        judgments = judge_arrays(sample, sample.result.original)
        assert judgments["following"].score <= 1.0, sample.edit.instruction
        assert judgments["following"].verdict == "no"
        assert judgments["following"].failure_text
        assert judgments["preserving"].score == 5.0 and judgments["quality"].score == 5.0


@pytest.mark.parametrize(
    "axis,kind",
    [
        ("following", "missing"),
        ("following", "partial"),
        ("following", "wrong"),
        ("preserving", "collateral"),
        ("quality", "noise"),
        ("quality", "blur"),
        ("quality", "blocking"),
    ],
)
def test_each_flaw_lowers_its_own_perspective_only(samples, axis, kind):
    rng = np.random.default_rng(0)
    config = FlawConfig()
    drops = []
    for sample in samples:
        if axis == "following" and kind not in following_kinds(sample):
            continue
        image, applied = apply_flaws(sample, {axis: kind}, config, rng)
        if not getattr(applied, axis):
            continue  # e.g. nothing left to preserve when the edit changes every pixel
        drops.append(5.0 - _scores(sample, image))
    drops = np.array(drops)
    assert len(drops) >= 10
    own = PERSPECTIVES.index(axis)
    others = [i for i in range(3) if i != own]
    assert drops[:, own].mean() >= 1.5, drops.mean(axis=0)
    assert (drops[:, others].mean(axis=0) <= 0.5).all(), drops.mean(axis=0)
    # and the judge says no on its own perspective for most flawed ground truths
    assert (drops[:, own] > 1.0).mean() >= 0.75


def test_flaw_rate_controls_the_fraction_of_flawed_ground_truths(samples):
    from experiments.replication.flaws import draw_flaws

    rng = np.random.default_rng(1)
    many = samples * 20
    for rate in (0.0, 0.4, 1.0):
        flawed = np.mean([bool(draw_flaws(s, FlawConfig(rate=rate), rng)) for s in many])
        assert abs(flawed - rate) < 0.05
    with pytest.raises(ValueError, match="rate"):
        FlawConfig(rate=1.5)


def test_exact_judge_builds_rewards_through_the_annotation_engine(tmp_path, samples):
    from PIL import Image

    from reward_edit_pipeline.data import iter_triplets, load_reward_records
    from reward_edit_pipeline.judge import AnnotationStore, annotate

    chosen = samples[:7]
    rows = []
    for number, sample in enumerate(chosen):
        edited = sample.result.target if number % 2 == 0 else sample.result.original
        Image.fromarray(sample.result.original).save(tmp_path / f"{number}_0.png")
        Image.fromarray(edited).save(tmp_path / f"{number}_1.png")
        rows.append(
            {
                "id": str(number),
                "instruction": sample.edit.instruction,
                "original": f"{number}_0.png",
                "edited": f"{number}_1.png",
            }
        )
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    judge = make_exact_judge(WorldRegistry(chosen))
    with AnnotationStore(tmp_path / "rewards.sqlite") as store:
        summary = annotate(iter_triplets(tmp_path / "m.jsonl"), judge, store, progress=False)
        again = annotate(iter_triplets(tmp_path / "m.jsonl"), judge, store, progress=False)
    assert summary.format()
    records = load_reward_records(tmp_path / "rewards.sqlite")
    assert sorted(records) == [str(n) for n in range(7)]
    for number in range(7):
        record = records[str(number)]
        if number % 2 == 0:
            assert record.scores == (5.0, 5.0, 5.0) and record.failure_text == "None; None; None"
        else:
            assert record.scores[0] <= 1.0 and record.failure_texts[0] != ""
    assert again is not None  # the second run resumes from the store


def test_exact_judge_fails_unknown_triplets_instead_of_guessing(samples):
    from PIL import Image

    judge = make_exact_judge(WorldRegistry(samples[:1]))
    other = samples[1]
    result = judge.judge(
        other.edit.instruction, Image.fromarray(other.result.original), Image.fromarray(other.result.target)
    )
    assert not result.ok
    assert all(result[p].error == "judge_error" and result[p].score is None for p in PERSPECTIVES)


def test_bad_experiment_arguments_name_the_flag():
    from experiments.replication.run import build_parser, validate

    args = build_parser().parse_args(["--out", "x", "--flaw-rate", "1.5"])
    with pytest.raises(ValueError, match="--flaw-rate must be in \\[0, 1\\]"):
        validate(args)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_run_trains_and_evaluates_every_variant_end_to_end(tmp_path):
    from experiments.replication.run import main

    assert main(["--out", str(tmp_path), "--smoke"]) == 0
    report = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert set(report["per_seed"]) == {"baseline", "reward", "scores_only"}
    assert (
        report["training"]["seed0/baseline"]["optimization_steps"]
        == report["training"]["seed0/reward"]["optimization_steps"]
    )
    assert "stage 2" in report["training"]["seed0/reward"]["base_model_handling"]
    assert report["references"]["clean_target"]["following_accuracy"] == 1.0
    assert report["references"]["unedited_original"]["following_accuracy"] == 0.0
    assert (tmp_path / "scores.png").is_file() and (tmp_path / "sweep.png").is_file()
    assert "reward vs baseline" in (tmp_path / "results.md").read_text(encoding="utf-8")
    for value in ("1", "5"):
        assert report["sweeps"]["following"]["reward"][value]
