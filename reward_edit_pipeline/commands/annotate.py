"""`reward-edit annotate`: grade editing triplets with an LVLM judge into an annotation store.

    reward-edit annotate --input SRC --store STORE.sqlite [--base-url URL] [--api-key-env NAME] [--model NAME]
        [--concurrency N] [--rpm N] [--tpm N] [--batch] [--dry-run]

The API key is read from the environment variable named by ``--api-key-env`` (``OPENAI_API_KEY`` by default).
Exit status: 0 when every item is done, 1 when some judgments failed (they are stored with their reason and retried
by the next run), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number (> 0), got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        required=True,
        help="InstructPix2Pix clip-filtered folder (<dir>/<id>/<seed>_0.jpg, <seed>_1.jpg, prompt.json), a JSONL/CSV "
        "manifest (original, edited, instruction, optional id), a saved datasets folder, or hf:<dataset>[@split] "
        "(e.g. hf:timbrooks/instructpix2pix-clip-filtered)",
    )
    parser.add_argument("--store", required=True, help="SQLite annotation store (created if missing; resumable)")
    parser.add_argument("--base-url", default=None, help="API root of an OpenAI-compatible server (default: OpenAI)")
    parser.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="name of the environment variable holding the API key"
    )
    parser.add_argument("--model", default="gpt-4o", help="model name (default: gpt-4o)")
    parser.add_argument("--concurrency", type=_positive_int, default=16, help="maximum requests in flight (default 16)")
    parser.add_argument("--rpm", type=_positive_float, default=None, help="client-side limit, requests per minute")
    parser.add_argument("--tpm", type=_positive_float, default=None, help="client-side limit, tokens per minute")
    parser.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (upload, poll, ingest)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the number of calls and a cost estimate; call nothing"
    )
    group = parser.add_argument_group("judge settings (part of the store key)")
    group.add_argument("--prompt-version", default="v1", help="prompt files <perspective>_<version>.txt (default v1)")
    group.add_argument("--prompt-dir", default=None, help="folder of custom prompt files (default: packaged prompts)")
    group.add_argument("--combined", action="store_true", help="one request per triplet with the combined prompt")
    group.add_argument(
        "--structured-output",
        choices=("json_schema", "json_object", "none"),
        default="json_schema",
        help="response_format sent (default json_schema; 'none' for servers without support)",
    )
    group.add_argument("--temperature", type=_non_negative_float, default=0.0)
    group.add_argument("--seed", type=int, default=0, help="sampling seed sent with each request (default 0)")
    group.add_argument("--max-tokens", type=_positive_int, default=300)
    group.add_argument("--image-max-side", type=_positive_int, default=512, help="downscale longest side to this")
    group.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg")
    group.add_argument("--image-detail", choices=("low", "high", "auto"), default="auto")
    group.add_argument("--azure-api-version", default=None, help="use Azure OpenAI (--base-url = Azure endpoint)")
    run_group = parser.add_argument_group("run settings")
    run_group.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds per request (default 60)")
    run_group.add_argument("--max-retries", type=int, default=5, help="retries on 429/5xx/timeouts (default 5)")
    run_group.add_argument("--seeds", choices=("first", "all"), default="first", help="seed pairs per folder key")
    run_group.add_argument("--limit", type=_positive_int, default=None, help="only the first N items")
    run_group.add_argument("--price-input", type=_non_negative_float, default=None, help="$ per 1M prompt tokens")
    run_group.add_argument("--price-output", type=_non_negative_float, default=None, help="$ per 1M completion tokens")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch_group = parser.add_argument_group("--batch settings")
    batch_group.add_argument("--batch-poll-interval", type=_positive_float, default=30.0, help="seconds (default 30)")
    batch_group.add_argument(
        "--batch-max-requests", type=_positive_int, default=50_000, help="requests per batch file (API limit 50000)"
    )
    batch_group.add_argument(
        "--batch-max-bytes",
        type=_positive_int,
        default=190 * 1024 * 1024,
        help="bytes per batch file (API limit 200 MB)",
    )
    batch_group.add_argument("--batch-dir", default=None, help="where batch JSONL files go (default: <store>.batches/)")
    batch_group.add_argument("--batch-submit-only", action="store_true", help="submit and exit; a later run ingests")


def build_judge(args: argparse.Namespace):
    from ..judge.factory import make_judge

    return make_judge(
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        require_key=not args.dry_run,  # fail before any work when the key is missing
        azure_api_version=args.azure_api_version,
        prompt_version=args.prompt_version,
        prompt_dir=args.prompt_dir,
        combined=args.combined,
        structured_output=args.structured_output,
        temperature=args.temperature,
        seed=args.seed,
        max_tokens=args.max_tokens,
        image_max_side=args.image_max_side,
        image_format=args.image_format,
        image_detail=args.image_detail,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )


def build_pricing(args: argparse.Namespace, judge):
    from ..judge import Pricing, pricing_for

    if (args.price_input is None) != (args.price_output is None):
        raise ValueError("give both --price-input and --price-output, or neither")
    if args.price_input is not None:
        return Pricing(args.price_input, args.price_output)
    return pricing_for(judge.model)


def run(args: argparse.Namespace) -> int:
    import itertools
    import sqlite3

    from ..data import iter_triplets
    from ._checks import check_store_path

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.max_retries < 0:
        print(f"error: --max-retries must be >= 0, got {args.max_retries}", file=sys.stderr)
        return 2
    try:
        check_store_path(args.store, must_exist=False)
        judge = build_judge(args)
        pricing = build_pricing(args, judge)
        items = iter_triplets(args.input, seeds=args.seeds)
        if args.limit is not None:
            items = itertools.islice(items, args.limit)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = _run(args, items, judge, pricing)
    except (ValueError, FileNotFoundError, sqlite3.DatabaseError) as error:  # e.g. a bad line in a JSONL manifest
        judge.close()
        print(f"error: {error}", file=sys.stderr)
        print(
            f"finished judgments (if any) are in {args.store}; fix the input and run again to resume", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: finished judgments are in {args.store}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    judge.close()
    print(summary.format())
    if summary.items == 0:
        print(f"warning: --input {args.input} holds no triplets; nothing was annotated", file=sys.stderr)
    if args.dry_run:
        return 0
    return 0 if summary.final_items_done == summary.items else 1


def _run(args: argparse.Namespace, items, judge, pricing):
    from ..judge import AnnotationStore, annotate

    with AnnotationStore(args.store) as store:
        if args.batch:
            from ..judge.batch import run_batch_annotation

            summary = run_batch_annotation(
                items,
                judge,
                store,
                dry_run=args.dry_run,
                pricing=pricing,
                poll_interval=args.batch_poll_interval,
                max_requests_per_file=args.batch_max_requests,
                max_bytes_per_file=args.batch_max_bytes,
                work_dir=args.batch_dir,
                submit_only=args.batch_submit_only,
                progress=not args.no_progress,
            )
        else:
            summary = annotate(
                items,
                judge,
                store,
                concurrency=args.concurrency,
                rpm=args.rpm,
                tpm=args.tpm,
                dry_run=args.dry_run,
                progress=not args.no_progress,
                pricing=pricing,
            )
    return summary
