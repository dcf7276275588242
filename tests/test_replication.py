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
    assert (summary.judged_ok, summary.cached) == (7 * 3, 0)
    records = load_reward_records(tmp_path / "rewards.sqlite")
    assert sorted(records) == [str(n) for n in range(7)]
    for number in range(7):
        record = records[str(number)]
        if number % 2 == 0:
            assert record.scores == (5.0, 5.0, 5.0) and record.failure_text == "None; None; None"
        else:
            assert record.scores[0] <= 1.0 and record.failure_texts[0] != ""
    # the second run resumes from the store: every judgment is cached, none is made again
    assert (again.judged_ok, again.cached, again.final_items_done) == (0, 7 * 3, 7)


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

    for flags, message in (
        (["--flaw-rate", "1.5"], "--flaw-rate must be in \\[0, 1\\]"),
        (["--dose-values", "1", "7"], "--dose-values must be in \\[0, 5\\]"),
        (["--seeds", "1", "1"], "--seeds must be distinct"),
        (["--guidance-scale", "0.5"], "--guidance-scale must be >= 1"),
    ):
        args = build_parser().parse_args(["--out", "x", *flags])
        with pytest.raises(ValueError, match=message):
            validate(args)


def test_text_encoder_tells_instructions_and_failure_texts_apart(samples):
    from experiments.replication.models import build_text_encoder, build_tokenizer, text_separation, world_words

    tokenizer = build_tokenizer()
    for word in world_words():
        if word.isalpha():
            assert len(tokenizer.tokenize(word.lower())) == 1, word
    failure_texts = [
        "None; None; None",
        "None; None; noise",
        "None; None; blur",
        "None; unrequested change to the square; None",
        "the circle is not red; None; None",
        "the circle is not blue; None; None",
        "the background is not pink; None; None",
    ]
    report = text_separation(
        tokenizer, build_text_encoder(tokenizer, seed=0), [s.edit.instruction for s in samples], failure_texts
    )
    assert report["instructions"] >= 25 and report["longest_text_tokens"] <= report["max_length"] == 20
    for key in ("instruction_sequence_cosine", "failure_text_sequence_cosine"):
        assert report[key]["mean"] < 0.3, (key, report[key])
    for key in ("instruction_pooled_cosine", "failure_text_pooled_cosine"):
        assert report[key]["mean"] < 0.3, (key, report[key])
    # the random 2-layer CLIP this replaces gave 0.992 for this pair
    assert report.get("red_vs_blue_sequence_cosine", 0.0) < 0.5


def test_scheduler_has_zero_terminal_snr_and_v_prediction():
    from diffusers import DDPMScheduler

    from experiments.replication.models import build_scheduler

    scheduler = build_scheduler()
    assert scheduler.config.prediction_type == "v_prediction"
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # no signal left at t = T
    scheduler.set_timesteps(10)
    assert int(scheduler.timesteps[0]) == 999  # trailing spacing starts at t = T
    trainer_view = DDPMScheduler.from_config(scheduler.config)  # what the trainer builds from the saved config
    assert trainer_view.config.prediction_type == "v_prediction"
    assert float(trainer_view.alphas_cumprod[-1]) < 1e-6


def test_score_sinusoid_separates_4_from_5():
    from experiments.replication.models import score_embedding_separation

    separation = score_embedding_separation()
    assert separation["4_vs_5"] < 0.99
    assert separation["1_vs_5"] < separation["3_vs_5"] < separation["4_vs_5"]


def test_tiny_base_model_edits_through_the_project_pipeline(tmp_path, samples):
    """A smoke run of the pipeline at 16 x 16: the saved common initialization loads with `load_pipeline` and edits
    with the zero-SNR v-prediction DDIM scheduler; the identity VAE reproduces the original exactly."""
    import torch
    from PIL import Image

    from experiments.replication.models import build_identity_vae, save_base_pipeline, set_scaling_factor
    from reward_edit_pipeline import load_pipeline

    images = np.stack([s.result.original for s in samples[:20]])
    vae = build_identity_vae(16)
    set_scaling_factor(vae, images)
    save_base_pipeline(tmp_path / "base", vae, unet_seed=0, text_seed=0, image_size=16)
    pipe = load_pipeline(str(tmp_path / "base"), device="cpu")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    with torch.no_grad():
        latents = pipe.vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mode()
        decoded = pipe.vae.decode(latents).sample
    assert (decoded - (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)).abs().max() < 2e-3
    pipe.set_progress_bar_config(disable=True)
    output = pipe(
        [samples[0].edit.instruction, samples[1].edit.instruction],
        image=[Image.fromarray(samples[0].result.original), Image.fromarray(samples[1].result.original)],
        reward_scores=(5.0, 5.0, 5.0),
        num_inference_steps=2,
        guidance_scale=1.0,
        image_guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert output.images.shape == (2, 16, 16, 3) and np.isfinite(output.images).all()
    assert output.images.std() > 0.01  # a random UNet gives noise, not a constant image


def test_paired_statistics_and_claim_verdict_on_known_numbers():
    from experiments.replication.run import claim_verdict, compare, dose_response_check

    def item(yes, scores):
        return {"following_yes": yes, "scores": scores}

    a = [item(False, [1.0, 3.0, 3.0])] * 20
    b = [item(True, [5.0, 4.0, 4.0])] * 12 + [item(False, [1.0, 3.0, 3.0])] * 8
    tests = compare({"a": {0: a, 1: a}, "b": {0: b, 1: b}}, "a", "b")
    # 24 discordant pairs, all in favour of b: exact McNemar p = 2 * 0.5**24
    assert tests["following_accuracy"]["discordant_b_only_a_only"] == [24, 0]
    assert tests["following_accuracy"]["p"] == pytest.approx(2 * 0.5**24)
    assert tests["quality"]["mean_difference"] == pytest.approx(0.6)
    assert tests["quality"]["p"] < 0.001
    verdict = claim_verdict(tests, {"passed": True})
    assert verdict["shown"]
    assert not claim_verdict(tests, {"passed": False})["shown"]  # no claim without the gate
    worse = compare({"a": {0: b}, "b": {0: a}}, "a", "b")
    assert not claim_verdict(worse, {"passed": True})["shown"]

    def metrics(value):
        return {"following": value, "preserving": value, "quality": value}

    dose = {"reward": {"quality": {"1": {0: metrics(2.0), 1: metrics(2.0)}, "5": {0: metrics(3.0), 1: metrics(1.5)}}}}
    check = dose_response_check(dose)["reward/quality"]
    assert check["per_seed"] == {"0": True, "1": False} and not check["monotonic_in_every_seed"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_trains_and_evaluates_every_variant_end_to_end(tmp_path):
    from experiments.replication.run import main

    assert main(["--out", str(tmp_path), "--smoke"]) == 0
    report = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert list(report["per_seed"]) == ["oracle", "baseline", "scores_only", "reward"]
    steps = {report["training"][f"seed0/{v}"]["optimization_steps"] for v in report["per_seed"]}
    assert steps == {2}
    assert 0.3 < report["world"]["flawed_fraction"] < 0.9  # 60 % requested of 40 triplets
    assert report["references"]["clean_target"]["following_accuracy"] == 1.0
    assert report["references"]["unedited_original"]["following_accuracy"] == 0.0
    assert set(report["tests"]) == {"oracle vs baseline", "scores_only vs baseline", "reward vs baseline"}
    assert set(report["dose_response"]["reward"]) == {"following", "preserving", "quality"}
    assert not report["gate"]["passed"] and not report["claim"]["shown"]  # 2 steps learn nothing
    for name in ("scores.png", "dose_response.png", "examples.png", "results.md"):
        assert (tmp_path / name).is_file()
