"""`reward-edit evaluate`: run the Real-Edit benchmark for one or more models/settings and write a report.

A thin shell over `reward_edit_pipeline.benchmark.run_evaluation`; see docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..benchmark.generation import DTYPES, SCHEDULERS, GenerationConfig, parse_reward_scores
from ..benchmark.stats import DEFAULT_BOOTSTRAP_RESAMPLES

DEFAULT_JUDGE_MODEL = "gpt-4o"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bench",
        required=True,
        type=Path,
        help="Benchmark folder (official Real-Edit layout with real_edit_instruct.json, or a folder with one *.jsonl "
        "of {image, instruction, type}) or the .jsonl file itself.",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="M",
        help="Model to evaluate (local pipeline folder or Hub id); repeat to evaluate several.",
    )
    parser.add_argument(
        "--scores",
        dest="scores",
        action="append",
        metavar="F,P,Q",
        help="Reward conditions (following,preserving,quality, each in [0, 5]); repeat for several settings "
        "(default: 5,5,5). For reward vs no reward, evaluate the stage-1 InstructPix2Pix model as another --model.",
    )
    parser.add_argument(
        "--failure-text",
        default=None,
        help="Failure-text condition (default: the model's 'no failure' text, 'None; None; None').",
    )
    parser.add_argument("--out", required=True, type=Path, help="Output folder (report, edited images, caches).")
    judge = parser.add_argument_group("judge")
    judge.add_argument("--base-url", default=None, help="OpenAI-compatible server URL (default: OpenAI).")
    judge.add_argument(
        "--judge-model", default=DEFAULT_JUDGE_MODEL, help=f"Judge model name (default: {DEFAULT_JUDGE_MODEL})."
    )
    judge.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="Environment variable holding the judge's API key (default: OPENAI_API_KEY).",
    )
    judge.add_argument(
        "--store", type=Path, default=None, help="Annotation store for judgments (default: OUT/judgments.sqlite)."
    )
    judge.add_argument("--concurrency", type=int, default=16, help="Judge requests in flight (default: 16).")
    judge.add_argument("--no-judge", action="store_true", help="Skip LVLM judging; report non-LVLM metrics only.")
    generation = parser.add_argument_group("generation (defaults: the official evaluation)")
    generation.add_argument("--steps", type=int, default=30, help="Denoising steps (default: 30).")
    generation.add_argument("--seed", type=int, default=42, help="Seed of every edit (default: 42).")
    generation.add_argument("--limit", type=int, default=None, help="Evaluate only the first N benchmark items.")
    generation.add_argument("--resolution", type=int, default=512, help="Long side before rounding (default: 512).")
    generation.add_argument("--multiple", type=int, default=64, help="Both sides a multiple of this (default: 64).")
    generation.add_argument("--guidance-scale", type=float, default=7.5, help="Text guidance (default: 7.5).")
    generation.add_argument("--image-guidance-scale", type=float, default=1.5, help="Image guidance (default: 1.5).")
    generation.add_argument(
        "--reward-guidance-scale", type=float, default=1.0, help="Reward guidance scale (default: 1.0)."
    )
    generation.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="euler-ancestral",
        help="'euler-ancestral' as in the official evaluation, or the model's own scheduler.",
    )
    generation.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    generation.add_argument("--dtype", choices=DTYPES, default="float32", help="Model dtype (default: float32).")
    report = parser.add_argument_group("report")
    report.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="SETTING",
        help="Per-item wins/losses of two settings: no value = the two settings of this run, or name two "
        "(label, folder name or 1-based index).",
    )
    report.add_argument("--clip-model", default=None, help="Local CLIP weights for CLIP-I/CLIP-T (optional).")
    report.add_argument("--dino-model", default=None, help="Local DINO weights for the DINO metric (optional).")
    report.add_argument("--no-extra-metrics", action="store_true", help="Skip CLIP and DINO (L1/L2 always run).")
    report.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP_RESAMPLES,
        help=f"Bootstrap resamples per confidence interval (default: {DEFAULT_BOOTSTRAP_RESAMPLES}).",
    )
    report.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def run(args: argparse.Namespace) -> int:
    from ..benchmark.loaders import BenchmarkFormatError
    from ..benchmark.runner import EvaluationConfig, run_evaluation

    try:
        score_settings = [parse_reward_scores(text) for text in (args.scores or ["5,5,5"])]
        generation = GenerationConfig(
            steps=args.steps,
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            reward_guidance_scale=args.reward_guidance_scale,
            resolution=args.resolution,
            multiple=args.multiple,
            scheduler=args.scheduler,
            device=args.device,
            torch_dtype=args.dtype,
        )
        if args.concurrency < 1:
            raise ValueError(f"--concurrency must be an integer >= 1, got {args.concurrency}")
        if args.bootstrap < 1:
            raise ValueError(
                f"--bootstrap must be an integer >= 1 (resamples per confidence interval), got {args.bootstrap}"
            )
        config = EvaluationConfig(
            bench=args.bench,
            models=args.models,
            out_dir=args.out,
            score_settings=score_settings,
            generation=generation,
            failure_text=args.failure_text,
            limit=args.limit,
            compare=args.compare,
            metrics=() if args.no_extra_metrics else ("clip", "dino"),
            clip_model=args.clip_model,
            dino_model=args.dino_model,
            bootstrap_resamples=args.bootstrap,
            judge_description=None if args.no_judge else args.judge_model,
            progress=not args.no_progress,
        )
        judge_edits = None
        if not args.no_judge:
            from ..benchmark.scoring import make_store_judge

            judge_edits = make_store_judge(
                store_path=args.store or args.out / "judgments.sqlite",
                base_url=args.base_url,
                model=args.judge_model,
                api_key_env=args.api_key_env,
                concurrency=args.concurrency,
            )
        report = run_evaluation(config, judge_edits)
    except (BenchmarkFormatError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'}, {args.out / 'index.html'}")
    for notice in report["notices"]:
        print(f"note: {notice}")
    return 0
