"""`torch.compile` vs eager for RewardUNet2DConditionModel (and the plain UNet beside it, for reference).

For each model: compile time (first call), the largest difference to eager (float32), dynamo's graph and graph-break
counts (`torch._dynamo.explain`), and the eager/compiled time ratio over interleaved pairs (median and spread).

Usage: python bench/compile_speed.py [--config tiny|small] [--repeats 7] [--device cpu] [--mode default]

`tiny` is the test UNet (32/64 channels, 32×32 latents); `small` keeps SD1.5's widths in its first two levels
(320/640 channels, 768-wide cross-attention) with one layer per block, on 32×32 latents. The batch is 3 (the
guidance batch). Ends with `RESULT` lines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from reward_edit_pipeline import RewardUNet2DConditionModel
from reward_edit_pipeline.testing import TEXT_WIDTH, get_dummy_unet_config

CONFIGS = {
    "tiny": ({**get_dummy_unet_config()}, TEXT_WIDTH),
    "small": (
        {
            "in_channels": 8,
            "out_channels": 4,
            "block_out_channels": (320, 640),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "layers_per_block": 1,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        768,
    ),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        function()
    synchronize(device)
    return time.perf_counter() - start


def measure(
    name: str, model, arguments: dict, repeats: int, device: torch.device, mode: str
) -> tuple[float, int, float]:
    """Print compile time, max |compiled − eager|, graph breaks and the eager/compiled ratio; return
    (ratio, graph breaks, max difference)."""
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(**arguments)
    torch._dynamo.reset()
    compiled = torch.compile(model, mode=mode)
    with torch.no_grad():
        eager_output = model(**arguments).sample
        start = time.perf_counter()
        compiled_output = compiled(**arguments).sample
        synchronize(device)
        compile_seconds = time.perf_counter() - start
    difference = (compiled_output - eager_output).abs().max().item()
    ratios, eager_times = [], []
    for index in range(repeats):
        if index % 2 == 0:
            eager, fast = seconds(lambda: model(**arguments), device), seconds(lambda: compiled(**arguments), device)
        else:
            fast, eager = seconds(lambda: compiled(**arguments), device), seconds(lambda: model(**arguments), device)
        ratios.append(eager / fast)
        eager_times.append(eager)
    median = statistics.median(ratios)
    print(
        f"{name}: graphs {explanation.graph_count}, graph breaks {explanation.graph_break_count}, "
        f"compile {compile_seconds:.1f} s, max |compiled - eager| {difference:.2e}, eager {statistics.median(eager_times) * 1e3:.1f} ms, "
        f"speed-up eager/compiled median {median:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, {repeats} pairs)"
    )
    for reason in explanation.break_reasons:
        print(f"  graph break: {reason.reason}")
    return median, explanation.graph_break_count, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="default", help="torch.compile mode (default, reduce-overhead, max-autotune)")
    args = parser.parse_args()
    device = torch.device(args.device)
    config, text_width = CONFIGS[args.config]
    torch.manual_seed(0)
    base = UNet2DConditionModel(**config).eval().to(device)
    reward = RewardUNet2DConditionModel.from_unet(base, reward_init="default", failure_text_embed_dim=text_width)
    reward = reward.eval().to(device)
    generator = torch.Generator().manual_seed(0)
    common = {
        "sample": torch.randn(3, 8, 32, 32, generator=generator).to(device),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(3, 77, text_width, generator=generator).to(device),
    }
    with torch.no_grad():
        condition = reward.compute_reward_condition(
            torch.full((3, 3), 5.0, device=device), torch.randn(3, text_width, generator=generator).to(device)
        )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, config {args.config}")
    plain_ratio, _, _ = measure("plain UNet", base, common, args.repeats, device, args.mode)
    reward_ratio, breaks, difference = measure(
        "reward UNet (precomputed condition)",
        reward,
        {**common, "reward_condition": condition},
        args.repeats,
        device,
        args.mode,
    )
    print(f"RESULT-INFO plain_unet_compile_speedup {plain_ratio:.3f}")
    print(f"RESULT reward_unet_graph_breaks {breaks} target <=0")
    print(f"RESULT reward_unet_compiled_max_abs_diff {difference:.2e} target <=1e-4")
    print(f"RESULT reward_unet_compile_speedup {reward_ratio:.3f} target >=1.0")


if __name__ == "__main__":
    main()
