"""Cost of the reward conditioning, measured in one run on the same random weights against the stock models:

(a) `unet`: RewardUNet2DConditionModel vs the plain UNet2DConditionModel at SD1.5 widths (block_out_channels
    320/640/1280/1280, cross-attention 768), 64×64 latents, batch 3 (the guidance batch).
(b) `pipeline_tiny`: RewardEditPipeline vs StableDiffusionInstructPix2PixPipeline with the tiny test components
    (UNet 32/64), 64×64 images, 20 steps.
(c) `pipeline_sd15`: the same two pipelines with a UNet of SD1.5 widths (320/640/1280/1280, 8-dim heads) and the tiny
    VAE and text encoder (cross-attention width 32), at a reduced resolution (32×32 images → 16×16 latents), 4 steps.

For each: the FLOP ratio (torch.utils.flop_counter; deterministic) and the time ratio, as the median and spread of
interleaved pairs (the order alternates; each side warmed up first), in wall-clock time and in this process's CPU
time (less sensitive to other processes on a shared machine). Ratios are what matter; absolute times are printed for
orientation only.

Usage: python bench/overhead.py [--unet-repeats 5] [--tiny-repeats 15] [--sd15-repeats 5] [--device cpu]
           [--only unet,pipeline_tiny,pipeline_sd15]

Ends with `RESULT <name> <value> target <op><value>` lines (`RESULT-INFO` lines carry context without a pass/fail).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from reward_edit_pipeline import RewardEditPipeline, RewardUNet2DConditionModel
from reward_edit_pipeline.testing import TEXT_WIDTH, get_dummy_components

SD15_WIDTHS = {
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
}
SD15_UNET = {**SD15_WIDTHS, "sample_size": 64, "cross_attention_dim": 768}
TARGETS = {
    "unet_flop_ratio": 1.0055,
    "unet_time_ratio": 1.02,
    "pipeline_tiny_time_ratio": 1.03,
    "pipeline_sd15_time_ratio": 1.01,
}

Stats = dict[str, tuple[float, float, float]]


def count_flops(function: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        function()
    return counter.get_total_flops()


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def interleaved_ratio(baseline, candidate, repeats: int, device: torch.device) -> tuple[Stats, float]:
    """Candidate/baseline ratios over `repeats` interleaved pairs (order alternates, after a warm-up of each):
    ({"wall": (median, min, max), "cpu": (median, min, max)}, median baseline wall seconds)."""
    timed(baseline, device), timed(candidate, device)  # warm-up
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    baseline_seconds = []
    for index in range(repeats):
        if index % 2 == 0:
            base_time, cand_time = timed(baseline, device), timed(candidate, device)
        else:
            cand_time, base_time = timed(candidate, device), timed(baseline, device)
        baseline_seconds.append(base_time[0])
        for clock, position in (("wall", 0), ("cpu", 1)):
            ratios[clock].append(cand_time[position] / base_time[position])
    stats = {clock: (statistics.median(values), min(values), max(values)) for clock, values in ratios.items()}
    return stats, statistics.median(baseline_seconds)


def describe(stats: Stats) -> str:
    return ", ".join(
        f"{clock} median {med:.4f} (min {low:.4f}, max {high:.4f})" for clock, (med, low, high) in stats.items()
    )


def report(name: str, baseline, candidate, repeats: int, device: torch.device, label: str) -> dict[str, float]:
    """Print and return the FLOP ratio and the interleaved time ratios of `candidate` vs `baseline`."""
    base_flops, cand_flops = count_flops(baseline), count_flops(candidate)
    print(
        f"{name}: GFLOP per call: stock {base_flops / 1e9:.3f}, reward {cand_flops / 1e9:.3f} "
        f"(+{(cand_flops - base_flops) / 1e9:.4f}, ratio {cand_flops / base_flops:.5f})"
    )
    stats, seconds = interleaved_ratio(baseline, candidate, repeats, device)
    print(f"{name}: time ratio ({label}, {repeats} interleaved pairs, stock {seconds:.3f} s): {describe(stats)}")
    return {"flop": cand_flops / base_flops, "wall": stats["wall"][0], "cpu": stats["cpu"][0]}


def unet_overhead(repeats: int, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    torch.manual_seed(0)
    base = UNet2DConditionModel(**SD15_UNET).eval()
    reward = RewardUNet2DConditionModel.from_unet(base, reward_init="default", failure_text_embed_dim=768).eval()
    if dtype != torch.float32:  # (cast only when asked: diffusers warns on every cast)
        base, reward = base.to(dtype=dtype), reward.to(dtype=dtype)
    base, reward = base.to(device), reward.to(device)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(3, 8, 64, 64, generator=generator).to(device, dtype)
    text = torch.randn(3, 77, 768, generator=generator).to(device, dtype)
    scores = torch.full((3, 3), 5.0, device=device)
    failure = torch.randn(3, 768, generator=generator).to(device, dtype)
    timestep = torch.tensor(500, device=device)
    with torch.no_grad():  # as a sampler runs it: the condition once per call, reused at every step
        condition = reward.compute_reward_condition(scores, failure)

    def run_base():
        return base(sample, timestep, text)

    def run_reward():
        return reward(sample, timestep, text, reward_condition=condition)

    return report("unet (SD1.5 widths, 64x64 latents, batch 3)", run_base, run_reward, repeats, device, f"{dtype}")


def pipeline_pair(unet_config: dict | None) -> tuple[StableDiffusionInstructPix2PixPipeline, RewardEditPipeline]:
    components = get_dummy_components(seed=0, plain_unet=True)
    if unet_config is not None:
        torch.manual_seed(0)
        components["unet"] = UNet2DConditionModel(**unet_config).eval()
    stock = StableDiffusionInstructPix2PixPipeline(**components, requires_safety_checker=False)
    torch.manual_seed(1)
    reward_unet = RewardUNet2DConditionModel.from_unet(components["unet"], reward_init="default").eval()
    ours = RewardEditPipeline(**{**components, "unet": reward_unet}, requires_safety_checker=False)
    for pipe in (stock, ours):
        pipe.set_progress_bar_config(disable=True)
    return stock, ours


def pipeline_overhead(name: str, unet_config: dict | None, size: int, steps: int, repeats: int) -> dict[str, float]:
    from PIL import Image

    stock, ours = pipeline_pair(unet_config)
    image = Image.new("RGB", (size, size), (120, 80, 40))

    def runner(pipe):
        def run():
            pipe(
                "make it blue",
                image,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            )

        return run

    label = f"{size}x{size} images, {steps} steps, cpu"
    return report(name, runner(stock), runner(ours), repeats, torch.device("cpu"), label)


def result_line(name: str, value: float, info: str = "") -> str:
    verdict = "" if value <= TARGETS[name] else "  (target not met)"
    return f"RESULT {name} {value:.4f} target <={TARGETS[name]}{info}{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet-repeats", "--repeats", type=int, default=5, help="interleaved UNet pairs (default 5)")
    parser.add_argument("--tiny-repeats", "--pipeline-repeats", type=int, default=15, help="tiny pipeline pairs")
    parser.add_argument("--tiny-steps", "--pipeline-steps", type=int, default=20)
    parser.add_argument("--sd15-repeats", type=int, default=5, help="SD1.5-width pipeline pairs (default 5)")
    parser.add_argument("--sd15-steps", type=int, default=4)
    parser.add_argument("--sd15-size", type=int, default=32, help="image side for the SD1.5-width pipeline")
    parser.add_argument("--only", default="unet,pipeline_tiny,pipeline_sd15", help="comma-separated parts to run")
    parser.add_argument("--device", default="cpu", help="device of the UNet part (the pipelines run on the CPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    parts = set(args.only.split(","))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    results: dict[str, dict[str, float]] = {}
    if "unet" in parts:
        results["unet"] = unet_overhead(args.unet_repeats, device, dtype)
    if "pipeline_tiny" in parts:
        results["pipeline_tiny"] = pipeline_overhead(
            "pipeline_tiny (UNet 32/64)", None, 64, args.tiny_steps, args.tiny_repeats
        )
    if "pipeline_sd15" in parts:
        config = {**SD15_WIDTHS, "sample_size": args.sd15_size // 2, "cross_attention_dim": TEXT_WIDTH}
        results["pipeline_sd15"] = pipeline_overhead(
            "pipeline_sd15 (UNet 320/640/1280/1280, tiny VAE and text encoder)",
            config,
            args.sd15_size,
            args.sd15_steps,
            args.sd15_repeats,
        )
    for part, values in results.items():
        print(f"RESULT-INFO {part}_flop_ratio {values['flop']:.5f}")
        print(f"RESULT-INFO {part}_cpu_time_ratio {values['cpu']:.4f}")
    for part, values in results.items():
        print(result_line(f"{part}_time_ratio", values["wall"], " (wall clock, median of interleaved pairs)"))
    if "unet" in results:
        print(result_line("unet_flop_ratio", results["unet"]["flop"]))


if __name__ == "__main__":
    main()
