"""Cost of the reward conditioning: RewardUNet2DConditionModel vs the plain UNet, and the full pipeline vs the stock
InstructPix2Pix pipeline, measured in one run on the same random weights.

(a) UNet forward at SD1.5 widths (block_out_channels 320/640/1280/1280, cross-attention 768), 64×64 latents,
    batch 3 (the guidance batch): FLOP ratio (torch.utils.flop_counter, deterministic) and wall-time ratio
    (median of interleaved runs, with spread).
(b) Full pipeline with identical tiny components: RewardEditPipeline vs StableDiffusionInstructPix2PixPipeline.

Usage: python bench/overhead.py [--repeats 5] [--pipeline-repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from reward_edit_pipeline import RewardEditPipeline, RewardUNet2DConditionModel
from reward_edit_pipeline.testing import get_dummy_components

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


def count_flops(function) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        function()
    return counter.get_total_flops()


def timed(function, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call; CPU time is robust to other processes' load."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def interleaved_ratio(baseline, candidate, repeats: int, device: torch.device) -> dict[str, tuple[float, float, float]]:
    """Candidate/baseline ratios over `repeats` interleaved pairs (order alternates after a warm-up of each):
    {"wall": (median, min, max), "cpu": (median, min, max)}."""
    timed(baseline, device), timed(candidate, device)  # warm-up
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for index in range(repeats):
        if index % 2 == 0:
            base_time, cand_time = timed(baseline, device), timed(candidate, device)
        else:
            cand_time, base_time = timed(candidate, device), timed(baseline, device)
        for clock, position in (("wall", 0), ("cpu", 1)):
            ratios[clock].append(cand_time[position] / base_time[position])
    return {clock: (statistics.median(values), min(values), max(values)) for clock, values in ratios.items()}


def describe(stats: dict[str, tuple[float, float, float]]) -> str:
    return ", ".join(
        f"{clock} median {med:.4f} (min {low:.4f}, max {high:.4f})" for clock, (med, low, high) in stats.items()
    )


def unet_overhead(repeats: int, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
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

    def run_base():
        return base(sample, timestep, text)

    def run_reward():
        return reward(sample, timestep, text, reward_scores=scores, failure_text_embeds=failure)

    base_flops, reward_flops = count_flops(run_base), count_flops(run_reward)
    flop_ratio = reward_flops / base_flops
    print(
        f"UNet GFLOP: plain {base_flops / 1e9:.1f}, reward {reward_flops / 1e9:.1f} (+{(reward_flops - base_flops) / 1e9:.2f})"
    )
    print(f"RESULT-INFO unet_flop_ratio {flop_ratio:.5f} target <=1.0055")
    stats = interleaved_ratio(run_base, run_reward, repeats, device)
    median = stats["wall"][0]
    print(f"UNet time ratio ({repeats} interleaved pairs, {device}, {dtype}): {describe(stats)}")
    return flop_ratio, median, stats["cpu"][0]


def pipeline_overhead(repeats: int, steps: int) -> float:
    from PIL import Image

    components = get_dummy_components(seed=0, plain_unet=True)
    stock = StableDiffusionInstructPix2PixPipeline(**components, requires_safety_checker=False)
    ours = RewardEditPipeline(
        **{**components, "unet": RewardUNet2DConditionModel.from_unet(components["unet"], reward_init="default")}
    )
    for pipe in (stock, ours):
        pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (64, 64), (120, 80, 40))

    def run_stock():
        stock(
            "make it blue",
            image,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    def run_ours():
        ours(
            "make it blue",
            image,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    stock_flops, our_flops = count_flops(run_stock), count_flops(run_ours)
    print(
        f"pipeline GFLOP per call: stock {stock_flops / 1e9:.2f}, ours {our_flops / 1e9:.2f} (ratio {our_flops / stock_flops:.4f})"
    )
    stats = interleaved_ratio(run_stock, run_ours, repeats, torch.device("cpu"))
    median = stats["wall"][0]
    print(f"pipeline time ratio (tiny components, {steps} steps, 64x64, {repeats} pairs): {describe(stats)}")
    return median, stats["cpu"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved UNet pairs (default 5)")
    parser.add_argument("--pipeline-repeats", type=int, default=15, help="interleaved pipeline pairs (default 15)")
    parser.add_argument("--pipeline-steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    flop_ratio, wall_ratio, unet_cpu_ratio = unet_overhead(args.repeats, device, dtype)
    pipeline_ratio, pipeline_cpu_ratio = pipeline_overhead(args.pipeline_repeats, args.pipeline_steps)
    print(f"RESULT-INFO unet_wall_ratio {wall_ratio:.4f} (cpu-time {unet_cpu_ratio:.4f}) target <=1.02")
    print(f"RESULT-INFO pipeline_wall_ratio {pipeline_ratio:.4f} (cpu-time {pipeline_cpu_ratio:.4f}) target <=1.03")
    print(f"RESULT unet_flop_ratio {flop_ratio:.5f} target <=1.0055")


if __name__ == "__main__":
    main()
