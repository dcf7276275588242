"""Training-step cost: stage 2 (multi-reward) vs a plain InstructPix2Pix step, and cached latents vs none.

    python bench/train_step.py                       # width-faithful small config on this machine (CPU or GPU)
    python bench/train_step.py --config sd15 --resolution 256 --mixed_precision fp16   # the paper's setting, on a GPU

Each timed step is one optimization step as the paper runs it: 4 micro-batches of 4 (the trainer's own objective,
`reward_edit_pipeline.train.step.training_loss`, + backward, with gradient checkpointing), gradient clipping, AdamW. Variants (timed interleaved, order rotated each repeat):

- `ip2p`: stock `UNet2DConditionModel` (8 input channels), VAE + text encoder run inside the step;
- `stage2`: `RewardUNet2DConditionModel` wrapping the same UNet, with rewards and failure-text embeddings (the
  trainer encodes the distinct failure texts once before training: the text encoder is frozen);
- `stage2_cached`: the same with `--cache_latents` batches (VAE posterior and text embeddings precomputed).

Deterministic measures: parameter counts and the FLOPs of one forward+backward (torch's FlopCounterMode), also for
the full SD1.5 shapes at 256 px on the meta device (no weights allocated). Peak memory: `torch.cuda` peak on a GPU;
on a CPU the peak resident set of a fresh process per variant.

Width-faithful small config: every width of SD1.5 (UNet 320/640 channels with 8-dim heads and 768-wide cross-attention,
SD's VAE, a 768-wide CLIP text encoder), fewer blocks and layers, 64 px images.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

VARIANTS = ("ip2p", "stage2", "stage2_cached")
TARGET_STAGE2_RATIO = 1.03
TARGET_CACHE_SPEEDUP = 1.5
# a failure text of typical length: one sentence per perspective, joined in score order
FAILURE_TEXT = (
    "The sky turned orange but the sun is missing and the reflection on the water was not updated; "
    "the boat in the foreground changed colour and shape; the horizon is blurry with visible artifacts"
)


def unet_config(name: str) -> dict[str, Any]:
    if name == "sd15":
        return {
            "in_channels": 8,
            "out_channels": 4,
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "sample_size": 64,
        }
    return {
        "in_channels": 8,
        "out_channels": 4,
        "block_out_channels": (320, 640),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "sample_size": 8,
    }


def vae_config(name: str) -> dict[str, Any]:
    blocks = 4
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * blocks,
        "up_block_types": ("UpDecoderBlock2D",) * blocks,
        "layers_per_block": 2 if name == "sd15" else 1,
        "latent_channels": 4,
        "sample_size": 256,
        "scaling_factor": 0.18215,
    }


def text_encoder_config(name: str, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12 if name == "sd15" else 2,
        vocab_size=len(tokenizer) if name != "sd15" else 49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )


def build(name: str, device: torch.device, weight_dtype: torch.dtype, variants: tuple[str, ...]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from reward_edit_pipeline import RewardUNet2DConditionModel
    from reward_edit_pipeline.testing import get_dummy_tokenizer

    torch.manual_seed(0)
    tokenizer = get_dummy_tokenizer()
    text_encoder = CLIPTextModel(text_encoder_config(name, tokenizer)).eval().requires_grad_(False)
    vae = AutoencoderKL(**vae_config(name)).eval().requires_grad_(False)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    plain = UNet2DConditionModel(**unet_config(name))
    unets = {}
    if "ip2p" in variants:
        unets["ip2p"] = plain
    if any(v.startswith("stage2") for v in variants):
        reward = RewardUNet2DConditionModel.from_unet(copy.deepcopy(plain), reward_init="default")
        unets.update({v: reward for v in variants if v.startswith("stage2")})
    for unet in unets.values():
        unet.train().enable_gradient_checkpointing()
        unet.to(device)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder.to(device, weight_dtype),
        "vae": vae.to(device, weight_dtype),
        "scheduler": scheduler,
        "unets": unets,
    }


def make_batches(parts: dict[str, Any], batch_size: int, resolution: int, device: torch.device) -> dict[str, Any]:
    from reward_edit_pipeline.train.cache import encode_failure_text_table, encode_pixels, encode_prompt_ids
    from reward_edit_pipeline.train.data import tokenize

    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand((2, batch_size, 3, resolution, resolution), generator=generator) * 2 - 1
    tokenizer = parts["tokenizer"]
    raw = {
        "batch_size": batch_size,
        "skipped": [],
        "original_pixel_values": pixels[0].to(device),
        "edited_pixel_values": pixels[1].to(device),
        "input_ids": tokenize(tokenizer, ["turn the sky into a sunset over the sea"] * batch_size).to(device),
        "failure_text_index": torch.zeros(batch_size, dtype=torch.long, device=device),
        "reward_scores": torch.tensor([[3.0, 4.0, 4.5]] * batch_size, device=device),
    }
    vae, text_encoder = parts["vae"], parts["text_encoder"]
    # As the trainer does, the distinct failure texts are encoded once before training (the text encoder is frozen).
    parts["failure_text_table"] = encode_failure_text_table(text_encoder, tokenizer, [FAILURE_TEXT])
    cached = {"batch_size": batch_size, "skipped": [], "reward_scores": raw["reward_scores"]}
    for suffix, flip in (("", False), ("_flipped", True)):
        original = raw["original_pixel_values"].flip(-1) if flip else raw["original_pixel_values"]
        edited = raw["edited_pixel_values"].flip(-1) if flip else raw["edited_pixel_values"]
        cached[f"original_latents{suffix}"], _ = encode_pixels(vae, original)
        cached[f"edited_latent_mean{suffix}"], cached[f"edited_latent_std{suffix}"] = encode_pixels(vae, edited)
    cached["prompt_embeds"] = encode_prompt_ids(text_encoder, raw["input_ids"])
    cached["failure_text_embeds"] = parts["failure_text_table"][raw["failure_text_index"]]
    return {"raw": raw, "cached": cached}


def make_context(parts: dict[str, Any], variant: str, resolution: int, device: torch.device, seed: int):
    from reward_edit_pipeline.train.cache import encode_prompt_ids
    from reward_edit_pipeline.train.data import tokenize
    from reward_edit_pipeline.train.step import LossContext

    vae = parts["vae"]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    null_prompt = encode_prompt_ids(parts["text_encoder"], tokenize(parts["tokenizer"], [""]).to(device))
    generator = None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed)
    return LossContext(
        vae=vae,
        text_encoder=parts["text_encoder"],
        noise_scheduler=parts["scheduler"],
        null_prompt_embeds=null_prompt,
        generator=generator,
        device=device,
        latent_channels=vae.config.latent_channels,
        latent_size=resolution // scale,
        cached=variant.endswith("_cached"),
        with_rewards=variant.startswith("stage2"),
        failure_text_embed_dim=parts["text_encoder"].config.hidden_size,
        failure_text_table=parts["failure_text_table"],
    )


def training_step(
    unet: Any, optimizer: Any, batch: dict[str, Any], ctx: Any, autocast: Any, accumulation: int = 1
) -> float:
    """One optimization step: `accumulation` micro-batches (loss + backward), clipping, AdamW."""
    from reward_edit_pipeline.train.step import training_loss

    for _ in range(accumulation):
        with autocast():
            loss, _ = training_loss(unet, batch, ctx)
        (loss / accumulation).backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward_flops(
    parts: dict[str, Any], variant: str, batches: dict[str, Any], resolution: int, device
) -> int:
    from reward_edit_pipeline.train.step import training_loss
    from torch.utils.flop_counter import FlopCounterMode

    unet = parts["unets"][variant]
    ctx = make_context(parts, variant, resolution, device, seed=0)
    batch = batches["cached" if ctx.cached else "raw"]
    with FlopCounterMode(display=False) as counter:
        loss, _ = training_loss(unet, batch, ctx)
        loss.backward()
    unet.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def sd15_meta_flops(resolution: int, batch_size: int) -> dict[str, int]:
    """FLOPs of one forward+backward at the full SD1.5 shapes, computed on the meta device (no memory used)."""
    device = torch.device("meta")
    with device:
        parts = build("sd15", device, torch.float32, VARIANTS)
    batches = make_batches(parts, batch_size, resolution, device)
    return {variant: forward_backward_flops(parts, variant, batches, resolution, device) for variant in VARIANTS}


class SavedTensorMeter:
    """Bytes of distinct tensors autograd saves for backward (parameters excluded), via saved-tensor hooks."""

    def __init__(self, parameters: Any) -> None:
        self.parameter_ids = {id(p) for p in parameters}
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.parameter_ids and id(base) not in self.seen:
            self.seen.add(id(base))
            self.total += base.numel() * base.element_size()
        return tensor

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def sd15_activation_bytes(resolution: int, batch_size: int) -> dict[str, int]:
    """Activation memory of the SD1.5 stage-2 UNet forward at `resolution`, fp32, on the meta device.

    Without checkpointing: every tensor saved for backward. With diffusers' gradient checkpointing (each resnet and
    transformer block recomputed in backward): tensors saved outside the checkpointed blocks + the inputs kept for
    recomputation + the largest single block's saved tensors (one block is recomputed at a time).
    """
    from reward_edit_pipeline import RewardUNet2DConditionModel

    device = torch.device("meta")
    with device:
        unet = RewardUNet2DConditionModel(**unet_config("sd15"), failure_text_embed_dim=768).train()
    latent = resolution // 8
    inputs = {
        "sample": torch.zeros(batch_size, 8, latent, latent, device=device),
        "timestep": torch.zeros(batch_size, dtype=torch.long, device=device),
        "encoder_hidden_states": torch.zeros(batch_size, 77, 768, device=device),
        "reward_scores": torch.zeros(batch_size, 3, device=device),
        "failure_text_embeds": torch.zeros(batch_size, 768, device=device),
    }
    full = SavedTensorMeter(unet.parameters())
    with full.hooks():
        unet(**inputs)

    largest_block, kept_inputs, kept_ids = 0, 0, set()

    def measuring_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal largest_block, kept_inputs
        inner = SavedTensorMeter(unet.parameters())
        with inner.hooks():
            function(*args, **kwargs)
        largest_block = max(largest_block, inner.total)
        for value in args:
            if isinstance(value, torch.Tensor) and id(value) not in kept_ids:
                kept_ids.add(id(value))
                kept_inputs += value.numel() * value.element_size()
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)

    unet.enable_gradient_checkpointing(gradient_checkpointing_func=measuring_checkpoint)
    outside = SavedTensorMeter(unet.parameters())
    with outside.hooks():
        unet(**inputs)
    return {
        "full": full.total,
        "checkpointed": outside.total + kept_inputs + largest_block,
        "parameters": sum(p.numel() for p in unet.parameters()),
    }


def memory_table(resolution: int, batch_size: int) -> str:
    """Markdown table: training memory of SD1.5 stage 2 (UNet trained, VAE and text encoder frozen)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from reward_edit_pipeline.testing import get_dummy_tokenizer

    with torch.device("meta"):
        frozen = sum(p.numel() for p in AutoencoderKL(**vae_config("sd15")).parameters())
        frozen += sum(p.numel() for p in CLIPTextModel(text_encoder_config("sd15", get_dummy_tokenizer())).parameters())
    activations = sd15_activation_bytes(resolution, batch_size)
    unet_params = activations["parameters"]
    gib = 2**30
    lines = [
        f"SD1.5 stage-2 UNet: {unet_params / 1e6:.1f} M trainable parameters; frozen VAE + text encoder "
        f"{frozen / 1e6:.1f} M; {resolution} px, batch {batch_size} per GPU. GiB:",
        "",
        "| precision | grad. ckpt | optimizer | weights | grads | optimizer states | EMA | frozen | activations | total |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for precision in ("fp16", "bf16", "no (fp32)"):
        half = precision != "no (fp32)"
        for checkpointing in (True, False):
            for optimizer, state_bytes in (("AdamW", 8), ("8-bit AdamW", 2)):
                weights, grads = 4 * unet_params, 4 * unet_params  # fp32 master weights and gradients (AMP)
                states = state_bytes * unet_params
                ema = 4 * unet_params
                frozen_bytes = (2 if half else 4) * frozen
                saved = activations["checkpointed" if checkpointing else "full"] / (2 if half else 1)
                total = weights + grads + states + ema + frozen_bytes + saved
                cells = [weights, grads, states, ema, frozen_bytes, saved, total]
                lines.append(
                    f"| {precision} | {'on' if checkpointing else 'off'} | {optimizer} | "
                    + " | ".join(f"{value / gib:.2f}" for value in cells)
                    + " |"
                )
    return "\n".join(lines)


def memory_worker(args: argparse.Namespace) -> None:
    """Run in a fresh process: build one variant, take 3 steps, print the peak resident set."""
    device = torch.device(args.device)
    parts = build(args.config, device, torch.float32, (args.memory_worker,))
    batches = make_batches(parts, args.batch_size, args.resolution, device)
    unet = parts["unets"][args.memory_worker]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-5, weight_decay=1e-2)
    ctx = make_context(parts, args.memory_worker, args.resolution, device, seed=0)
    batch = batches["cached" if ctx.cached else "raw"]
    for _ in range(3):
        training_step(unet, optimizer, batch, ctx, _noop)
    print(json.dumps({"peak_rss_bytes": peak_resident_bytes()}))


def peak_resident_bytes() -> int:
    """This process's peak resident set. `VmHWM` belongs to the process image (reset by exec); `ru_maxrss` is not:
    Linux carries it over from the parent through fork + exec."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _noop:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("small", "sd15"), default="small")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=4, help="micro-batches per step (paper: 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_memory", action="store_true", help="skip the per-variant memory processes (CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--memory_worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args)
        return

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    print(f"device={device} config={args.config} resolution={args.resolution} batch={args.batch_size} "
          f"accumulation={args.gradient_accumulation_steps} "
          f"mixed_precision={args.mixed_precision} threads={torch.get_num_threads()}")  # fmt: skip
    parts = build(args.config, device, weight_dtype, VARIANTS)
    batches = make_batches(parts, args.batch_size, args.resolution, device)
    plain, reward = parts["unets"]["ip2p"], parts["unets"]["stage2"]
    plain_params = sum(p.numel() for p in plain.parameters())
    reward_params = sum(p.numel() for p in reward.parameters())
    print(
        f"params: ip2p UNet {plain_params:,}  stage-2 UNet {reward_params:,} (+{reward_params / plain_params - 1:.2%})"
    )

    # Separate optimizers per variant (stage2 and stage2_cached share the model: their Adam states are separate but
    # the updates land on the same weights, which does not change the cost of a step).
    optimizers = {v: torch.optim.AdamW(parts["unets"][v].parameters(), lr=5e-5, weight_decay=1e-2) for v in VARIANTS}
    contexts = {v: make_context(parts, v, args.resolution, device, seed=0) for v in VARIANTS}

    def autocast():
        if args.mixed_precision == "no":
            return _noop()
        return torch.autocast(device.type, dtype=weight_dtype)

    wall_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peaks: dict[str, int] = {}
    for repeat in range(args.warmup + args.repeats):
        order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
        for variant in order:
            ctx = contexts[variant]
            batch = batches["cached" if ctx.cached else "raw"]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            training_step(
                parts["unets"][variant], optimizers[variant], batch, ctx, autocast, args.gradient_accumulation_steps
            )
            synchronize(device)
            if repeat >= args.warmup:
                wall_times[variant].append(time.perf_counter() - start)
                cpu_times[variant].append(time.process_time() - start_cpu)
            if device.type == "cuda":
                peaks[variant] = max(peaks.get(variant, 0), torch.cuda.max_memory_allocated(device))

    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1e3:8.1f} ms  min {min(values) * 1e3:8.1f}  max {max(values) * 1e3:8.1f}"

    for variant in VARIANTS:
        print(f"step {variant:14s} wall {summary(wall_times[variant])}  (n={len(wall_times[variant])})")
        print(f"step {variant:14s} cpu  {summary(cpu_times[variant])}")
    # On a GPU the wall time is the cost. On a (shared) CPU the process's CPU time is: wall time there also counts the
    # time other programs held the cores.
    times = wall_times if device.type == "cuda" else cpu_times
    print(f"ratios below use {'wall' if device.type == 'cuda' else 'CPU'} time")
    # per-repeat paired ratios (interleaved), for the spread
    stage2_ratios = [s / p for s, p in zip(times["stage2"], times["ip2p"])]
    cache_speedups = [u / c for u, c in zip(times["stage2"], times["stage2_cached"])]
    print(f"stage2/ip2p step time: median {statistics.median(stage2_ratios):.3f} "
          f"(min {min(stage2_ratios):.3f}, max {max(stage2_ratios):.3f})")  # fmt: skip
    print(f"cached-latents speed-up (stage2 / stage2_cached): median {statistics.median(cache_speedups):.2f}x "
          f"(min {min(cache_speedups):.2f}, max {max(cache_speedups):.2f})")  # fmt: skip

    flops = {v: forward_backward_flops(parts, v, batches, args.resolution, device) for v in VARIANTS}
    print("forward+backward GFLOPs (this config): " + ", ".join(f"{v} {flops[v] / 1e9:.1f}" for v in VARIANTS))
    print(f"  FLOP ratio stage2/ip2p {flops['stage2'] / flops['ip2p']:.4f}, "
          f"uncached/cached {flops['stage2'] / flops['stage2_cached']:.2f}x")  # fmt: skip
    sd15 = sd15_meta_flops(256, args.batch_size)
    print("forward+backward GFLOPs (full SD1.5 shapes, 256 px, batch 4, meta device): "
          + ", ".join(f"{v} {sd15[v] / 1e9:.0f}" for v in VARIANTS))  # fmt: skip
    print(f"  FLOP ratio stage2/ip2p {sd15['stage2'] / sd15['ip2p']:.4f}, "
          f"uncached/cached {sd15['stage2'] / sd15['stage2_cached']:.2f}x")  # fmt: skip

    print(memory_table(256, args.batch_size))
    if device.type == "cuda":
        for variant in VARIANTS:
            print(f"peak GPU memory {variant:14s} {peaks[variant] / 2**30:.2f} GiB")
    elif not args.skip_memory:
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--memory_worker", variant, "--config", args.config,
                       "--resolution", str(args.resolution), "--batch_size", str(args.batch_size),
                       "--device", args.device]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()
            peak = json.loads(output[-1])["peak_rss_bytes"]
            print(f"peak resident memory (fresh process, 3 steps) {variant:14s} {peak / 2**30:.2f} GiB")

    # medians of the per-repeat ratios (each pair timed back to back), as printed above with their spread
    print(f"cached_latents_speedup {statistics.median(cache_speedups):.2f} target >={TARGET_CACHE_SPEEDUP}")
    print(f"RESULT stage2_vs_ip2p_step_time {statistics.median(stage2_ratios):.3f} target <={TARGET_STAGE2_RATIO}")


if __name__ == "__main__":
    main()
