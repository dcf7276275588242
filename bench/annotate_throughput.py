"""Annotation throughput: our engine at concurrency 64 vs the sequential baseline (one call at a time).

Workload: ``--items`` triplets (default 1000) x 3 perspectives against the loopback OpenAI-protocol server
(``tests/openai_server.py``, run in its own process) answering each call after ``--latency`` seconds (default 0.2).
Both sides run the same engine, judge, store and server; only the number of calls in flight differs (the baseline is
``concurrency=1``, the paper's evaluation pattern of one request at a time).

The sequential baseline is latency-bound and linear in the number of calls (1000 items x 3 x 0.2 s >= 10 minutes),
so by default it runs on the first ``--baseline-items`` items (default 100 = 300 calls) and the comparison is per
call: ``speedup = (baseline seconds / baseline calls) / (engine seconds / engine calls)``; pass
``--baseline-items 1000`` to time the whole sequential run. Rounds are interleaved (engine, baseline, engine, ...)
with fresh stores; the median and the spread over rounds are reported. Deterministic measures: the server's call
count per run (must equal 3 x items) and its peak number of concurrent requests. Peak RSS is this (client) process's
maximum resident set size, which includes the input list, the store and all in-flight requests.

    python bench/annotate_throughput.py [--items 1000] [--latency 0.2] [--concurrency 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_items(folder: Path, count: int):
    """``count`` distinct tiny triplets on disk (64x64 JPEG pairs)."""
    from PIL import Image

    from reward_edit_pipeline.data import Triplet

    items = []
    for index in range(count):
        original, edited = folder / f"{index}_0.jpg", folder / f"{index}_1.jpg"
        Image.new("RGB", (64, 64), (index % 256, (index // 256) % 256, 77)).save(original, quality=90)
        Image.new("RGB", (64, 64), (77, index % 256, (index // 256) % 256)).save(edited, quality=90)
        items.append(Triplet(f"{index:06d}", f"make object {index} look different", original, edited))
    return items


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "openai_server.py"), "--latency", str(latency), "--no-request-log"],
        stdout=subprocess.PIPE,
        text=True,
    )
    base_url = process.stdout.readline().strip()
    if not base_url.startswith("http"):
        process.kill()
        raise RuntimeError(f"the loopback server did not start (got {base_url!r})")
    return process, base_url


def server_call(base_url: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(
        base_url + path,
        method=method,
        headers={"Authorization": "Bearer bench"},
        data=b"" if method == "POST" else None,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def timed_run(items, base_url: str, concurrency: int, store_path: Path) -> dict:
    from reward_edit_pipeline.judge import AnnotationStore, OpenAIJudge, run_annotation

    server_call(base_url, "/_reset", "POST")
    judge = OpenAIJudge(base_url=base_url, timeout=30, max_retries=3)
    with AnnotationStore(store_path) as store:
        started = time.perf_counter()
        summary = asyncio.run(run_annotation(items, judge, store, concurrency=concurrency, progress=False))
        elapsed = time.perf_counter() - started
    stats = server_call(base_url, "/_stats")
    return {
        "seconds": elapsed,
        "calls": summary.judged_ok + summary.judged_failed,
        "ok": summary.judged_ok,
        "server_calls": stats["chat_count"],
        "server_peak_concurrency": stats["peak_concurrency"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per call")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--baseline-items", type=int, default=100, help="items for the sequential baseline")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in ("items", "concurrency", "baseline_items", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.baseline_items > args.items:
        parser.error(f"--baseline-items ({args.baseline_items}) cannot exceed --items ({args.items})")
    os.environ.setdefault("OPENAI_API_KEY", "bench-not-a-real-key")

    server, base_url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory(prefix="annotate-bench-") as temporary:
            folder = Path(temporary)
            items = make_items(folder, args.items)
            baseline_items = items[: args.baseline_items]
            engine_runs, baseline_runs = [], []
            for round_index in range(args.repeats):
                engine = timed_run(items, base_url, args.concurrency, folder / f"engine{round_index}.sqlite")
                baseline = timed_run(baseline_items, base_url, 1, folder / f"baseline{round_index}.sqlite")
                for run in (engine, baseline):
                    if run["server_calls"] != run["calls"] or run["ok"] != run["calls"]:
                        raise RuntimeError(f"call accounting mismatch: {run}")
                engine_runs.append(engine)
                baseline_runs.append(baseline)
                speedup = (baseline["seconds"] / baseline["calls"]) / (engine["seconds"] / engine["calls"])
                print(
                    f"round {round_index + 1}: engine c={args.concurrency} {engine['calls']} calls in "
                    f"{engine['seconds']:.2f} s ({engine['calls'] / engine['seconds']:.1f} calls/s, server peak "
                    f"{engine['server_peak_concurrency']} in flight); sequential {baseline['calls']} calls in "
                    f"{baseline['seconds']:.2f} s ({baseline['calls'] / baseline['seconds']:.2f} calls/s, server peak "
                    f"{baseline['server_peak_concurrency']}); speedup {speedup:.1f}x",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(timeout=10)

    speedups = [(b["seconds"] / b["calls"]) / (e["seconds"] / e["calls"]) for e, b in zip(engine_runs, baseline_runs)]
    engine_seconds = [run["seconds"] for run in engine_runs]
    per_call_baseline = statistics.median(run["seconds"] / run["calls"] for run in baseline_runs)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    median_speedup = statistics.median(speedups)
    print(
        f"workload: {args.items} items x 3 perspectives = {3 * args.items} calls, {args.latency * 1000:.0f} ms "
        f"server latency; sequential baseline timed on {args.baseline_items} items"
    )
    print(
        f"engine (concurrency {args.concurrency}): median {statistics.median(engine_seconds):.2f} s "
        f"(min {min(engine_seconds):.2f}, max {max(engine_seconds):.2f}) for {3 * args.items} calls"
    )
    print(
        f"sequential: median {per_call_baseline * 1000:.1f} ms per call -> {per_call_baseline * 3 * args.items:.0f} s "
        f"for {3 * args.items} calls"
    )
    print(
        f"speedup: median {median_speedup:.1f}x (min {min(speedups):.1f}, max {max(speedups):.1f}) over {args.repeats} rounds"
    )
    print(
        f"peak RSS (client process): {peak_rss_mib:.0f} MiB (target < 1024 MiB: {'PASS' if peak_rss_mib < 1024 else 'FAIL'})"
    )
    print(f"RESULT annotate_speedup_c{args.concurrency}_vs_sequential {median_speedup:.1f} target >=50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
