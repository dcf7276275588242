"""Test the paper's central claim at CPU scale, end to end with the project's own code.

    .venv/bin/python -m experiments.replication.run --out runs/replication          # full run (3 seeds)
    .venv/bin/python -m experiments.replication.run --out /tmp/smoke --smoke        # wiring check

Steps: world + training triplets (60 % flawed, one perspective each) -> rewards by the exact judge through
`annotate` + `AnnotationStore` -> per seed, one common random InstructPix2Pix initialization (identity VAE, hand-built
text encoder, zero-terminal-SNR v-prediction scheduler) -> four variants trained with equal steps by
`python -m reward_edit_pipeline.train`: `oracle` (stage 1 on the same triplets with every flaw removed; also the clean-data gate),
`baseline` (stage 1 on all triplets, no rewards), `scores_only` (stage 2, failure texts "None") and `reward` (stage 2,
scores + failure texts) -> edits of held-out scenes with `load_pipeline` / `RewardEditPipeline` at rewards (5, 5, 5)
and no failure text, graded by the exact judge through the same annotation engine -> paired tests, effect sizes,
gap closed towards the oracle, dose-response of each requested score, plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .flaws import AXES, FlawConfig, flawed_ground_truth
from .judge import WorldRegistry, make_exact_judge
from .world import EDIT_TYPES, Sample, generate_samples, image_key

logger = logging.getLogger("replication")

VARIANTS = ("oracle", "baseline", "scores_only", "reward")
REWARD_VARIANTS = ("scores_only", "reward")
PERSPECTIVES = ("following", "preserving", "quality")
TRAIN_WORLD_SEED, EVAL_WORLD_SEED = 1_000, 2_000
GATE_EDIT_TYPES = ("background", "global", "style")  # the kinds that passed the clean-data gate (README)
GATE_ACCURACY = 0.8
SIGNIFICANCE = 0.05


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments.replication.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Output folder (created; re-running reuses finished models).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (default 0 1 2).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="Default: all four.")
    parser.add_argument(
        "--edit-types",
        nargs="+",
        default=list(GATE_EDIT_TYPES),
        choices=EDIT_TYPES,
        help="Edit kinds of the world (default: the kinds that pass the clean-data gate).",
    )
    parser.add_argument("--train-size", type=int, default=2000, help="Training triplets (default 2000).")
    parser.add_argument("--eval-size", type=int, default=150, help="Held-out evaluation triplets (default 150).")
    parser.add_argument(
        "--flaw-rate", type=float, default=0.6, help="Fraction of flawed ground truths, in [0, 1] (one axis each)."
    )
    parser.add_argument("--steps", type=int, default=1000, help="Optimization steps per model (equal for all).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--inference-steps", type=int, default=10, help="DDIM steps (trailing spacing).")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="Text guidance (default 1: off).")
    parser.add_argument("--image-guidance-scale", type=float, default=1.0, help="Image guidance (default 1: off).")
    parser.add_argument(
        "--guided-check",
        type=float,
        nargs=2,
        default=[3.0, 1.5],
        metavar=("TEXT", "IMAGE"),
        help="Guidance scales of the one guided check (first seed, baseline and reward); pass 1 1 to skip.",
    )
    parser.add_argument(
        "--dose-values",
        type=float,
        nargs="*",
        default=[1.0, 3.0, 5.0],
        help="Requested score of each perspective in the dose-response (others 5); empty to skip.",
    )
    parser.add_argument(
        "--dose-variants", nargs="*", default=["reward"], choices=REWARD_VARIANTS, help="Models of the dose-response."
    )
    parser.add_argument("--jobs", type=int, default=2, help="Training processes at a time (one thread each).")
    parser.add_argument("--image-size", type=int, default=16, help="World image side: 16 (default), 32 or 64.")
    parser.add_argument("--smoke", action="store_true", help="Trivial sizes: checks the wiring, not the claim.")
    return parser


def validate(args: argparse.Namespace) -> argparse.Namespace:
    if args.smoke:
        args.train_size, args.eval_size, args.steps = 40, 10, 2
        args.inference_steps, args.seeds, args.batch_size = 2, args.seeds[:1], 8
        args.dose_values = [1.0, 5.0]
        args.variants = list(VARIANTS)
    kinds = len(args.edit_types)
    checks = [
        (args.train_size >= kinds, f"--train-size must be >= {kinds} (one per edit type), got {args.train_size}"),
        (args.eval_size >= kinds, f"--eval-size must be >= {kinds} (one per edit type), got {args.eval_size}"),
        (0.0 <= args.flaw_rate <= 1.0, f"--flaw-rate must be in [0, 1], got {args.flaw_rate}"),
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.jobs >= 1, f"--jobs must be >= 1, got {args.jobs}"),
        (args.inference_steps >= 1, f"--inference-steps must be >= 1, got {args.inference_steps}"),
        (args.learning_rate > 0, f"--learning-rate must be > 0, got {args.learning_rate}"),
        (args.guidance_scale >= 1, f"--guidance-scale must be >= 1, got {args.guidance_scale}"),
        (args.image_guidance_scale >= 1, f"--image-guidance-scale must be >= 1, got {args.image_guidance_scale}"),
        (min(args.guided_check) >= 1, f"--guided-check scales must be >= 1, got {args.guided_check}"),
        (args.image_size in (16, 32, 64), f"--image-size must be 16, 32 or 64, got {args.image_size}"),
        (all(0 <= v <= 5 for v in args.dose_values), f"--dose-values must be in [0, 5], got {args.dose_values}"),
        (len(set(args.seeds)) == len(args.seeds), f"--seeds must be distinct, got {args.seeds}"),
        (len(set(args.edit_types)) == kinds, f"--edit-types must be distinct, got {args.edit_types}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return args


# ----------------------------------------------------------------------------------------------- data
def _save_png(array: np.ndarray, path: Path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def build_world(args: argparse.Namespace, out: Path) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Training samples (with flawed ground truths written to disk) and held-out evaluation samples."""
    kinds = tuple(args.edit_types)
    train = generate_samples(args.train_size, TRAIN_WORLD_SEED, args.image_size, prefix="t", edit_types=kinds)
    evaluation = generate_samples(args.eval_size, EVAL_WORLD_SEED, args.image_size, prefix="e", edit_types=kinds)
    train_keys = {image_key(s.edit.instruction, s.result.original) for s in train}
    held_out = [s for s in evaluation if image_key(s.edit.instruction, s.result.original) not in train_keys]
    data = out / "data"
    (data / "train").mkdir(parents=True, exist_ok=True)
    (data / "eval").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(TRAIN_WORLD_SEED + 1)
    config = FlawConfig(rate=args.flaw_rate, axis_counts=(1.0, 0.0, 0.0))
    rows, flaw_rows, clean_rows = [], [], []
    for sample in train:
        edited, applied = flawed_ground_truth(sample, config, rng)
        original_path = _save_png(sample.result.original, data / "train" / f"{sample.sample_id}_0.png")
        edited_path = _save_png(edited, data / "train" / f"{sample.sample_id}_1.png")
        rows.append(
            {
                "id": sample.sample_id,
                "instruction": sample.edit.instruction,
                "original": original_path,
                "edited": edited_path,
            }
        )
        flaw_rows.append({"id": sample.sample_id, "edit_type": sample.edit.edit_type, **applied.__dict__})
        clean_path = (
            edited_path
            if not applied.flawed
            else _save_png(sample.result.target, data / "train" / f"{sample.sample_id}_clean.png")
        )
        clean_rows.append({**rows[-1], "edited": clean_path})
    _write_jsonl(data / "train.jsonl", rows)
    # the oracle's data: the same triplets with every flaw removed (exact clean targets)
    _write_jsonl(data / "train_unflawed.jsonl", clean_rows)
    _write_jsonl(data / "train_flaws.jsonl", flaw_rows)
    eval_rows = []
    for sample in held_out:
        original_path = _save_png(sample.result.original, data / "eval" / f"{sample.sample_id}_0.png")
        target_path = _save_png(sample.result.target, data / "eval" / f"{sample.sample_id}_target.png")
        eval_rows.append(
            {
                "id": sample.sample_id,
                "instruction": sample.edit.instruction,
                "original": original_path,
                "target": target_path,
                "edit_type": sample.edit.edit_type,
            }
        )
    _write_jsonl(data / "eval.jsonl", eval_rows)
    stats = {
        "edit_types": list(args.edit_types),
        "train_triplets": len(train),
        "eval_triplets": len(held_out),
        "eval_dropped_as_seen_in_training": len(evaluation) - len(held_out),
        "flawed_fraction": float(np.mean([any(r[a] for a in AXES) for r in flaw_rows])),
        "flawed_by_axis": {a: float(np.mean([bool(r[a]) for r in flaw_rows])) for a in AXES},
    }
    return train, held_out, stats


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def annotate_training(out: Path, registry: WorldRegistry) -> dict[str, Any]:
    """Rewards of the training triplets by the exact judge, through the project's annotation engine and store."""
    from reward_edit_pipeline.data import iter_triplets
    from reward_edit_pipeline.judge import AnnotationStore, annotate
    from reward_edit_pipeline.rewards import join_failure_texts

    judge = make_exact_judge(registry)
    store_path = out / "rewards.sqlite"
    with AnnotationStore(store_path) as store:
        summary = annotate(iter_triplets(out / "data" / "train.jsonl"), judge, store, concurrency=8, progress=False)
        items = list(store.iter_items())
    scores = np.array([item.scores for item in items if item.complete], dtype=float)
    # scores-only ablation: the same scores, every failure text empty ("None; None; None")
    rows = [
        {"id": item.item_id, "status": "done", "scores": list(item.scores), "failure_texts": ["", "", ""]}
        for item in items
        if item.complete
    ]
    _write_jsonl(out / "rewards_scores_only.jsonl", rows)
    failure_texts = sorted({join_failure_texts(item.failure_texts) for item in items if item.complete})
    return {
        "annotation_summary": summary.format(),
        "annotated": len(items),
        "complete": int(len(scores)),
        "mean_scores": dict(zip(PERSPECTIVES, scores.mean(axis=0).round(3).tolist())),
        "fraction_below_5": dict(zip(PERSPECTIVES, (scores < 5).mean(axis=0).round(3).tolist())),
        "distinct_failure_texts": failure_texts,
    }


# ----------------------------------------------------------------------------------------------- models
def build_base(args: argparse.Namespace, out: Path, train: list[Sample], failure_texts: list[str]) -> dict[str, Any]:
    """The identity VAE (scaled on the training images) and one random-UNet InstructPix2Pix folder per seed: the
    common initialization of every variant of that seed. Also checks, before any training, that the text encoder
    tells instructions and failure texts apart and that the score sinusoid separates 4 from 5."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from .models import (
        build_identity_vae,
        save_base_pipeline,
        score_embedding_separation,
        set_scaling_factor,
        text_separation,
    )

    rows = [json.loads(line) for line in open(out / "data" / "train.jsonl", encoding="utf-8")]
    images = [np.asarray(Image.open(r["edited"]).convert("RGB")) for r in rows]
    vae = build_identity_vae(args.image_size)
    scaling = set_scaling_factor(vae, np.stack(images))
    for seed in args.seeds:
        save_base_pipeline(out / "base" / f"seed{seed}", vae, unet_seed=seed, text_seed=0, image_size=args.image_size)
    base = out / "base" / f"seed{args.seeds[0]}"
    separation = text_separation(
        CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        CLIPTextModel.from_pretrained(base, subfolder="text_encoder").eval(),
        [sample.edit.instruction for sample in train],
        failure_texts,
    )
    return {
        "vae": {"kind": "identity AutoencoderKL (pixels as latents)", "scaling_factor": scaling},
        "text_separation": separation,
        "score_embedding": score_embedding_separation(),
    }


def trainer_arguments(args: argparse.Namespace, out: Path, seed: int, variant: str) -> list[str]:
    """The flags of one training run of the project's trainer (`python -m reward_edit_pipeline.train`)."""
    output_dir = out / "models" / f"seed{seed}" / variant
    argv = [
        "--stage",
        "1" if variant in ("baseline", "oracle") else "2",
        "--pretrained_model_name_or_path",
        str(out / "base" / f"seed{seed}"),
        "--train_data_dir",
        str(out / "data" / ("train_unflawed.jsonl" if variant == "oracle" else "train.jsonl")),
        "--output_dir",
        str(output_dir),
        "--resolution",
        str(args.image_size),
        "--no-random_flip",  # "top left" / "top right" are in the instructions: a flip would contradict them
        "--train_batch_size",
        str(args.batch_size),
        "--gradient_accumulation_steps",
        "1",
        "--max_train_steps",
        str(args.steps),
        "--learning_rate",
        str(args.learning_rate),
        "--lr_scheduler",
        "cosine",
        "--lr_warmup_steps",
        str(max(1, args.steps // 20)),
        "--mixed_precision",
        "no",
        "--no-gradient_checkpointing",
        "--dataloader_num_workers",
        "0",
        "--cache_latents",
        "--latents_cache_dir",
        str(out / "latents_cache" / f"seed{seed}_{variant}"),
        "--use_ema",
        "--ema_decay",
        "0.995",
        "--report_to",
        "none",
        "--checkpointing_steps",
        str(args.steps + 1),
        "--seed",
        str(seed),
    ]
    if variant == "reward":
        argv += ["--rewards", str(out / "rewards.sqlite")]
    elif variant == "scores_only":
        argv += ["--rewards", str(out / "rewards_scores_only.jsonl")]
    return argv


def train_all(args: argparse.Namespace, out: Path, runs: list[tuple[int, str]]) -> dict[str, float]:
    """Train every (seed, variant) with the project's trainer, `--jobs` processes at a time, one torch thread each
    (two OpenMP threads per process on a shared 2-core machine slow training down many times over)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending = []
    for seed, variant in runs:
        output_dir = out / "models" / f"seed{seed}" / variant
        if (output_dir / "train_summary.json").is_file():
            continue  # finished by an earlier invocation
        if output_dir.exists():
            shutil.rmtree(output_dir)
        pending.append((seed, variant))
    running: list[tuple[subprocess.Popen, int, str, float, Any]] = []
    durations: dict[str, float] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            seed, variant = pending.pop(0)
            (out / "logs").mkdir(parents=True, exist_ok=True)
            log = open(out / "logs" / f"train_seed{seed}_{variant}.log", "w", encoding="utf-8")
            command = [sys.executable, "-m", "reward_edit_pipeline.train"] + trainer_arguments(args, out, seed, variant)
            logger.info("training seed %d %s: %s", seed, variant, " ".join(command))
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
            running.append((process, seed, variant, time.perf_counter(), log))
        time.sleep(1.0)
        for entry in list(running):
            process, seed, variant, started, log = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            if process.returncode != 0:
                for other in running:
                    other[0].kill()
                raise RuntimeError(
                    f"training seed {seed} {variant} failed (exit {process.returncode}); see "
                    f"{out / 'logs' / f'train_seed{seed}_{variant}.log'}"
                )
            durations[f"train_seed{seed}_{variant}"] = round(time.perf_counter() - started, 1)
            logger.info("trained seed %d %s in %.1f s", seed, variant, durations[f"train_seed{seed}_{variant}"])
    return durations


def training_summary(out: Path, seed: int, variant: str) -> dict[str, Any]:
    path = out / "models" / f"seed{seed}" / variant / "train_summary.json"
    return json.loads(path.read_text(encoding="utf-8"))


def generate_edits(
    args: argparse.Namespace,
    model_dir: Path,
    eval_rows: list[dict[str, Any]],
    reward_scores: tuple[float, ...],
    seed: int,
    guidance: tuple[float, float] | None = None,
    batch: int = 75,
) -> list[np.ndarray]:
    """Edits of the held-out scenes by the project's pipeline (`load_pipeline` -> `RewardEditPipeline`)."""
    import torch

    from reward_edit_pipeline import load_pipeline

    pipe = load_pipeline(str(model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    edits: list[np.ndarray] = []
    for start in range(0, len(eval_rows), batch):
        rows = eval_rows[start : start + batch]
        images = [Image.open(r["original"]).convert("RGB") for r in rows]
        generator = torch.Generator().manual_seed(10_000 * seed + start)
        with torch.no_grad():
            output = pipe(
                [r["instruction"] for r in rows],
                image=images,
                reward_scores=reward_scores,
                failure_text=None,
                num_inference_steps=args.inference_steps,
                guidance_scale=guidance[0] if guidance else args.guidance_scale,
                image_guidance_scale=guidance[1] if guidance else args.image_guidance_scale,
                generator=generator,
                output_type="np",
            )
        edits += [np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) for image in output.images]
    return edits


def judge_edits(
    out: Path, name: str, eval_rows: list[dict[str, Any]], edits: list[np.ndarray], registry: WorldRegistry
) -> list[dict[str, Any]]:
    """Grade edits with the exact judge through `annotate` + `AnnotationStore` (the LVLM code path)."""
    from reward_edit_pipeline.data import iter_triplets
    from reward_edit_pipeline.judge import AnnotationStore, annotate

    folder = out / "edits" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for row, edit in zip(eval_rows, edits):
        rows.append(
            {
                "id": row["id"],
                "instruction": row["instruction"],
                "original": row["original"],
                "edited": _save_png(edit, folder / f"{row['id']}.png"),
            }
        )
    _write_jsonl(folder / "manifest.jsonl", rows)
    with AnnotationStore(folder / "judgments.sqlite") as store:
        annotate(
            iter_triplets(folder / "manifest.jsonl"), make_exact_judge(registry), store, concurrency=8, progress=False
        )
        results = []
        for row in eval_rows:
            item = store.get(row["id"])
            if item is None or not item.complete:
                raise RuntimeError(f"judging {name}/{row['id']} failed: {item and item.judgments}")
            results.append(
                {
                    "id": row["id"],
                    "edit_type": row["edit_type"],
                    "scores": list(item.scores),
                    "following_yes": item.judgments["following"].verdict == "yes",
                    "failure_texts": list(item.failure_texts),
                }
            )
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    scores = np.array([r["scores"] for r in results], dtype=float)
    summary = {p: float(scores[:, i].mean()) for i, p in enumerate(PERSPECTIVES)}
    summary["following_accuracy"] = float(np.mean([r["following_yes"] for r in results]))
    summary["all_yes"] = float(np.mean([r["following_yes"] and min(r["scores"][1:]) >= 4 for r in results]))
    return summary


# ----------------------------------------------------------------------------------------------- statistics
METRICS = ("following_accuracy", "following", "preserving", "quality")
CLAIM_METRICS = ("following_accuracy", "preserving", "quality")  # the paper's three perspectives


def _values(results: list[dict[str, Any]], metric: str) -> np.ndarray:
    if metric == "following_accuracy":
        return np.array([float(r["following_yes"]) for r in results])
    return np.array([r["scores"][PERSPECTIVES.index(metric)] for r in results], dtype=float)


def compare(per_item: dict[str, dict[int, list[dict[str, Any]]]], a: str, b: str) -> dict[str, Any]:
    """Paired tests of variant `b` against `a` over (seed, item) pairs (both share the seed's initialization, the
    held-out items and the sampling noise): exact McNemar (binomial test on the discordant pairs) for following
    accuracy, Wilcoxon signed-rank for the scores. Effect sizes: the mean difference, the paired standardized mean
    difference (mean / std of the differences) and, per seed, the mean difference (its sign must hold in every seed)."""
    from scipy import stats

    seeds = sorted(set(per_item[a]) & set(per_item[b]))
    tests: dict[str, Any] = {}
    for metric in METRICS:
        x = np.concatenate([_values(per_item[a][s], metric) for s in seeds])
        y = np.concatenate([_values(per_item[b][s], metric) for s in seeds])
        difference = y - x
        entry: dict[str, Any] = {
            "mean_a": float(x.mean()),
            "mean_b": float(y.mean()),
            "mean_difference": float(difference.mean()),
            "standardized_difference": float(difference.mean() / difference.std(ddof=1))
            if difference.std(ddof=1) > 0
            else 0.0,
            "per_seed_difference": {
                str(s): float(_values(per_item[b][s], metric).mean() - _values(per_item[a][s], metric).mean())
                for s in seeds
            },
            "pairs": int(len(x)),
        }
        if metric == "following_accuracy":
            only_b, only_a = int(np.sum(y > x)), int(np.sum(x > y))
            entry["test"] = "exact McNemar"
            entry["discordant_b_only_a_only"] = [only_b, only_a]
            entry["p"] = float(stats.binomtest(only_b, only_b + only_a, 0.5).pvalue) if only_a + only_b else 1.0
        else:
            entry["test"] = "Wilcoxon signed-rank"
            entry["p"] = float(stats.wilcoxon(y, x).pvalue) if np.any(difference != 0) else 1.0
        tests[metric] = entry
    return tests


def claim_verdict(tests: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """The claim counts as shown only if, for all three perspectives, `reward` beats `baseline` with p < 0.05 and
    the difference has the paper's sign (positive) in every seed; and only if the gate passed."""
    checks = {}
    for metric in CLAIM_METRICS:
        test = tests[metric]
        checks[metric] = {
            "positive": test["mean_difference"] > 0,
            "significant": test["p"] < SIGNIFICANCE,
            "positive_in_every_seed": all(v > 0 for v in test["per_seed_difference"].values()),
        }
    shown = gate["passed"] and all(all(c.values()) for c in checks.values())
    return {"shown": bool(shown), "gate_passed": gate["passed"], "checks": checks}


def gap_closed(per_seed: dict[str, dict[int, dict[str, float]]], variant: str) -> dict[str, float | None]:
    """(variant - baseline) / (oracle - baseline) of the means over seeds; None where the oracle is not better."""
    result: dict[str, float | None] = {}
    for metric in METRICS:
        mean = {
            v: float(np.mean([per_seed[v][s][metric] for s in per_seed[v]])) for v in (variant, "baseline", "oracle")
        }
        span = mean["oracle"] - mean["baseline"]
        result[metric] = round((mean[variant] - mean["baseline"]) / span, 3) if span > 1e-9 else None
    return result


def dose_response_check(dose: dict[str, Any]) -> dict[str, Any]:
    """For each model and perspective: does the judged score of that perspective rise strictly with the requested
    score, in every seed?"""
    checks: dict[str, Any] = {}
    for variant, by_perspective in dose.items():
        for perspective, by_value in by_perspective.items():
            values = sorted(by_value, key=float)
            seeds = sorted(by_value[values[0]])
            per_seed = {}
            for seed in seeds:
                curve = [by_value[v][seed][perspective] for v in values]
                per_seed[str(seed)] = bool(all(b > a for a, b in zip(curve, curve[1:])))
            checks[f"{variant}/{perspective}"] = {
                "monotonic_in_every_seed": all(per_seed.values()),
                "per_seed": per_seed,
            }
    return checks


# ----------------------------------------------------------------------------------------------- report
def _mean_std(values: list[float], scale: float = 1.0) -> str:
    array = np.asarray(values) * scale
    std = array.std(ddof=1) if len(array) > 1 else 0.0
    return f"{array.mean():.2f} ± {std:.2f}"


def format_table(per_seed: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = [
        "| model | following acc. (%) | following | preserving | quality | all three ok (%) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        if variant not in per_seed:
            continue
        seeds = per_seed[variant]
        cells = []
        for metric in ("following_accuracy", "following", "preserving", "quality", "all_yes"):
            scale = 100.0 if metric in ("following_accuracy", "all_yes") else 1.0
            cells.append(_mean_std([seeds[s][metric] for s in sorted(seeds)], scale))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_tests(tests: dict[str, Any]) -> str:
    lines = [
        "| comparison | metric | difference | standardized | per seed | test | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_metric in tests.items():
        for metric, t in by_metric.items():
            scale = 100.0 if metric == "following_accuracy" else 1.0
            seeds = ", ".join(f"{v * scale:+.2f}" for v in t["per_seed_difference"].values())
            lines.append(
                f"| {name} | {metric}{' (points)' if scale == 100 else ''} | {t['mean_difference'] * scale:+.2f} | "
                f"{t['standardized_difference']:+.2f} | {seeds} | {t['test']} | {t['p']:.2g} |"
            )
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    verdict = report["claim"]
    gate = report["gate"]
    lines = [
        "# Replication results",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Wall time: {report['wall_time_s']:.0f} s; CPU time (this process and its children): "
        f"{report['cpu_time_s']:.0f} s (machine: {report['machine']}); estimate on two idle cores: "
        f"{report['quiet_two_core_estimate_s']:.0f} s.",
        "",
        f"**Gate** (oracle = stage 1 on the same triplets, unflawed; following accuracy >= {GATE_ACCURACY:.0%} on held-out "
        f"scenes in every seed): {'passed' if gate['passed'] else 'NOT passed'} "
        f"(per seed: {', '.join(f'{k}: {v * 100:.1f} %' for k, v in gate['per_seed'].items())}).",
        "",
        f"**Claim** (reward > baseline on following accuracy, preserving and quality, p < {SIGNIFICANCE}, the sign in "
        f"every seed): {'shown' if verdict['shown'] else 'NOT shown'}.",
        "",
        "## Held-out evaluation (rewards requested (5, 5, 5), no failure text; mean ± std over seeds)",
        "",
        report["table"],
        "",
        "## Paired tests against the baseline (over seed × item)",
        "",
        format_tests(report["tests"]),
        "",
        "Gap closed towards the oracle, (variant − baseline) / (oracle − baseline):",
        "",
        "```",
        json.dumps(report["gap_closed"], indent=1),
        "```",
        "",
        "## Dose-response (requested score of one perspective, others 5): judged score of that perspective",
        "",
    ]
    for variant, by_perspective in report["dose_response"].items():
        for perspective, by_value in by_perspective.items():
            cells = []
            for value in sorted(by_value, key=float):
                cells.append(f"{value}: {_mean_std([m[perspective] for m in by_value[value].values()])}")
            check = report["dose_response_check"][f"{variant}/{perspective}"]["monotonic_in_every_seed"]
            lines.append(f"- {variant}, {perspective}: " + ", ".join(cells) + f" — monotonic in every seed: {check}")
    if report["guided_check"]:
        lines += [
            "",
            "## Guided check (first seed)",
            "",
            "| model | following acc. (%) | following | preserving | quality |",
        ]
        lines.append("|---|---|---|---|---|")
        for name, m in report["guided_check"].items():
            lines.append(
                f"| {name} | {m['following_accuracy'] * 100:.1f} | {m['following']:.2f} | {m['preserving']:.2f} "
                f"| {m['quality']:.2f} |"
            )
    lines += [
        "",
        "## References (same judge)",
        "",
        "| reference | following acc. (%) | following | preserving | quality |",
        "|---|---|---|---|---|",
    ]
    for name, m in report["references"].items():
        lines.append(
            f"| {name} | {m['following_accuracy'] * 100:.1f} | {m['following']:.2f} | {m['preserving']:.2f} "
            f"| {m['quality']:.2f} |"
        )
    kinds = report["world"]["edit_types"]
    lines += ["", "## Following accuracy by edit type (%, all seeds)", "", "| model | " + " | ".join(kinds) + " |"]
    lines.append("|---|" + "---|" * len(kinds))
    for variant, by_type in report["following_accuracy_by_edit_type"].items():
        lines.append(f"| {variant} | " + " | ".join(f"{by_type[t] * 100:.0f}" for t in kinds) + " |")
    checks = {k: v for k, v in report["checks_before_training"].items()}
    checks["text_separation"] = {k: v for k, v in checks["text_separation"].items()}
    lines += [
        "",
        "## Checks before training, data and timings",
        "",
        "```",
        json.dumps(
            {
                "checks_before_training": checks,
                "world": report["world"],
                "training_rewards": {
                    k: v for k, v in report["training_rewards"].items() if k != "distinct_failure_texts"
                },
                "timings_s": report["timings_s"],
                "cpu_times_s": report["cpu_times_s"],
            },
            indent=1,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plots
def plot_scores(out: Path, per_seed: dict[str, dict[int, dict[str, float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    variants = [v for v in VARIANTS if v in per_seed]
    colours = {"oracle": "#bbb", "baseline": "#777", "scores_only": "#7ad", "reward": "#2a7"}
    for axis, metric in zip(axes, METRICS):
        scale = 100 if metric == "following_accuracy" else 1
        values = [[per_seed[v][s][metric] * scale for s in sorted(per_seed[v])] for v in variants]
        axis.bar(range(len(variants)), [np.mean(v) for v in values], color=[colours[v] for v in variants])
        for number, v in enumerate(values):
            axis.scatter([number] * len(v), v, color="k", s=8, zorder=3)
        axis.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
        axis.set_title(metric.replace("_", " ") + (" (%)" if scale == 100 else " (0-5)"), fontsize=9)
    figure.tight_layout()
    path = out / "scores.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return str(path)


def plot_dose_response(out: Path, dose: dict[str, Any]) -> str | None:
    if not dose:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    for axis, perspective in zip(axes, PERSPECTIVES):
        for variant, by_perspective in dose.items():
            by_value = by_perspective[perspective]
            xs = sorted(by_value, key=float)
            for seed in sorted(by_value[xs[0]]):
                axis.plot([float(x) for x in xs], [by_value[x][seed][perspective] for x in xs], alpha=0.35, lw=1)
            means = [np.mean([m[perspective] for m in by_value[x].values()]) for x in xs]
            axis.plot([float(x) for x in xs], means, marker="o", lw=2, label=f"{variant} (mean)")
        axis.set_xlabel(f"requested {perspective} (others 5)", fontsize=8)
        axis.set_ylabel(f"judged {perspective}", fontsize=8)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "dose_response.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return str(path)


def save_examples(out: Path, eval_rows: list[dict[str, Any]], variants: list[str], seed: int, per_kind: int = 2) -> str:
    """A grid: original | clean target | each variant's edit, `per_kind` held-out items per edit type."""
    kinds = list(dict.fromkeys(r["edit_type"] for r in eval_rows))
    chosen = [r for kind in kinds for r in [r for r in eval_rows if r["edit_type"] == kind][:per_kind]]
    tiles = []
    for row in chosen:
        images = [
            np.asarray(Image.open(row["original"]).convert("RGB")),
            np.asarray(Image.open(row["target"]).convert("RGB")),
        ]
        for variant in variants:
            images.append(np.asarray(Image.open(out / "edits" / f"seed{seed}_{variant}" / f"{row['id']}.png")))
        tiles.append(np.concatenate([np.pad(i, ((1, 1), (1, 1), (0, 0)), constant_values=255) for i in images], 1))
    grid = np.concatenate(tiles, 0)
    path = out / "examples.png"
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path, optimize=True)
    (out / "examples.txt").write_text(
        "columns: original | clean target | "
        + " | ".join(variants)
        + f" (seed {seed})\n"
        + "\n".join(r["instruction"] for r in chosen)
        + "\n",
        encoding="utf-8",
    )
    return str(path)


# ----------------------------------------------------------------------------------------------- main
def _cpu_time() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # see `train_all`: oversubscribed OpenMP threads are the slowest option on a busy CPU
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cpu_times: dict[str, float] = {}
    cpu_mark = [_cpu_time()]

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        cpu_times[name] = round(_cpu_time() - cpu_mark[0], 1)
        cpu_mark[0] = _cpu_time()
        logger.info("%s: %.1f s (CPU %.1f s)", name, timings[name], cpu_times[name])
        return time.perf_counter()

    t = time.perf_counter()
    train, held_out, world_stats = build_world(args, out)
    registry = WorldRegistry(train + held_out)
    t = lap("world", t)
    annotation_stats = annotate_training(out, registry)
    t = lap("annotation", t)
    base_checks = build_base(args, out, train, annotation_stats["distinct_failure_texts"])
    t = lap("init_and_checks", t)

    eval_rows = [json.loads(line) for line in open(out / "data" / "eval.jsonl", encoding="utf-8")]
    targets = [np.asarray(Image.open(r["target"]).convert("RGB")) for r in eval_rows]
    originals = [np.asarray(Image.open(r["original"]).convert("RGB")) for r in eval_rows]
    reference = {
        "clean_target": summarize(judge_edits(out, "clean_target", eval_rows, targets, registry)),
        "vae_round_trip_of_target": summarize(
            judge_edits(
                out,
                "vae_round_trip",
                eval_rows,
                vae_round_trip(out / "base" / f"seed{args.seeds[0]}", [r["target"] for r in eval_rows]),
                registry,
            )
        ),
        "unedited_original": summarize(judge_edits(out, "unedited", eval_rows, originals, registry)),
    }
    t = lap("references", t)

    # the oracle first (it is the clean-data gate), then the other variants
    order = [v for v in VARIANTS if v in args.variants]
    timings.update(train_all(args, out, [(seed, variant) for variant in order for seed in args.seeds]))
    t = lap("training_all", t)

    train_summaries: dict[str, Any] = {}
    per_item: dict[str, dict[int, list[dict[str, Any]]]] = {v: {} for v in order}
    per_seed: dict[str, dict[int, dict[str, float]]] = {v: {} for v in order}
    dose: dict[str, dict[str, dict[str, dict[int, dict[str, float]]]]] = {}
    guided: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        for variant in order:
            summary = training_summary(out, seed, variant)
            train_summaries[f"seed{seed}/{variant}"] = {
                k: summary.get(k)
                for k in ("optimization_steps", "samples_seen", "final_loss", "wall_time_s", "mean_step_time_s")
            }
            model_dir = out / "models" / f"seed{seed}" / variant
            edits = generate_edits(args, model_dir, eval_rows, (5.0, 5.0, 5.0), seed)
            per_item[variant][seed] = judge_edits(out, f"seed{seed}_{variant}", eval_rows, edits, registry)
            per_seed[variant][seed] = summarize(per_item[variant][seed])
            if variant in args.dose_variants and args.dose_values:
                for index, perspective in enumerate(PERSPECTIVES):
                    for value in args.dose_values:
                        if value == 5.0:
                            metrics = per_seed[variant][seed]
                        else:
                            requested = [5.0, 5.0, 5.0]
                            requested[index] = float(value)
                            name = f"seed{seed}_{variant}_{perspective}{value:g}"
                            dose_edits = generate_edits(args, model_dir, eval_rows, tuple(requested), seed)
                            metrics = summarize(judge_edits(out, name, eval_rows, dose_edits, registry))
                        entry = dose.setdefault(variant, {}).setdefault(perspective, {})
                        entry.setdefault(f"{value:g}", {})[seed] = metrics
            if seed == args.seeds[0] and variant in ("baseline", "reward") and max(args.guided_check) > 1:
                guided_edits = generate_edits(
                    args, model_dir, eval_rows, (5.0, 5.0, 5.0), seed, guidance=tuple(args.guided_check)
                )
                name = f"seed{seed}_{variant}_guided"
                guided[f"{variant} (text {args.guided_check[0]:g}, image {args.guided_check[1]:g})"] = summarize(
                    judge_edits(out, name, eval_rows, guided_edits, registry)
                )
            t = lap(f"eval_seed{seed}_{variant}", t)

    gate = {"threshold": GATE_ACCURACY, "per_seed": {}, "passed": False}
    if "oracle" in per_seed:
        gate["per_seed"] = {str(s): m["following_accuracy"] for s, m in per_seed["oracle"].items()}
        gate["passed"] = all(v >= GATE_ACCURACY for v in gate["per_seed"].values())
    tests = {}
    if "baseline" in order:
        for variant in order:
            if variant != "baseline":
                tests[f"{variant} vs baseline"] = compare(per_item, "baseline", variant)
    claim = (
        claim_verdict(tests["reward vs baseline"], gate)
        if "reward vs baseline" in tests
        else {"shown": False, "gate_passed": gate["passed"], "checks": {}}
    )
    gaps = (
        {v: gap_closed(per_seed, v) for v in REWARD_VARIANTS if v in per_seed}
        if {"oracle", "baseline"} <= set(per_seed)
        else {}
    )
    by_type = {
        variant: {
            kind: float(
                np.mean(
                    [
                        r["following_yes"]
                        for s in per_item[variant]
                        for r in per_item[variant][s]
                        if r["edit_type"] == kind
                    ]
                )
            )
            for kind in args.edit_types
        }
        for variant in order
    }
    plots = [plot_scores(out, per_seed), save_examples(out, eval_rows, order, args.seeds[0])]
    dose_plot = plot_dose_response(out, dose)
    if dose_plot:
        plots.append(dose_plot)
    report = {
        "command": " ".join([sys.executable, "-m", "experiments.replication.run"] + sys.argv[1:]),
        "arguments": vars(args),
        "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
        "world": world_stats,
        "training_rewards": annotation_stats,
        "checks_before_training": base_checks,
        "references": reference,
        "gate": gate,
        "claim": claim,
        "per_seed": per_seed,
        "tests": tests,
        "gap_closed": gaps,
        "dose_response": dose,
        "dose_response_check": dose_response_check(dose),
        "guided_check": guided,
        "following_accuracy_by_edit_type": by_type,
        "training": train_summaries,
        "timings_s": timings,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "cpu_time_s": round(_cpu_time(), 1),
        "cpu_times_s": cpu_times,
        # on two otherwise idle cores: training runs two processes at a time, everything else on one core
        "quiet_two_core_estimate_s": round(
            cpu_times.get("training_all", 0.0) / min(2, args.jobs)
            + sum(v for k, v in cpu_times.items() if k != "training_all"),
            1,
        ),
        "plots": plots,
    }
    report["table"] = format_table(per_seed)
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "results.md").write_text(format_report(report), encoding="utf-8")
    logger.info("results:\n%s", report["table"])
    logger.info("wall time %.1f s; report in %s", report["wall_time_s"], out / "results.md")
    return report


def vae_round_trip(model_dir: Path, paths: list[str]) -> list[np.ndarray]:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").eval()
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels.float() / 127.5 - 1).latent_dist.mode()).sample
    return list(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
    except ValueError as error:
        parser.error(str(error))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
