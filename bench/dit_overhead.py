"""FLOP overhead of the reward path on the DiT editors (goal: ≤ 1.005× the base transformer).

FLUX.1 Kontext [dev] at its real widths (19 double + 38 single blocks, 24 heads × 128, T5 width 4096, CLIP pooled
768), built on the `meta` device: no weights are allocated, `torch.utils.flop_counter` counts the matmul/attention
FLOPs from shapes alone, so the 12B model is measured exactly on a laptop. One transformer forward (one denoising
step, batch 1) at an edit of `--size`² pixels: image tokens = 2 × (size/16)² (noisy latents + reference image),
text tokens = 512 (T5).

- base: `FluxTransformer2DModel.forward`;
- reward: `RewardFluxTransformer2DModel.forward` with the reward condition precomputed once per call (as
  `RewardFluxKontextPipeline` does: `joint_attention_kwargs["reward_condition"]`);
- conditioner: one `RewardConditioner` call (once per pipeline call, not per step), reported separately.

Qwen-Image-Edit (-2509 / -2511) at its real widths (60 blocks, 24 heads × 128, Qwen2.5-VL-7B width 3584), same
method: image tokens = 2 × (size/16)² (noisy latents + one reference image at the same size), text tokens =
`QWEN_TEXT_TOKENS` (instruction + the vision tokens of the reference, after the dropped system template; a 384²
Plus reference alone gives ≈ 190). `--qwen-zero-cond-t` measures the -2511 layout (doubled timestep embedding).

- base: `QwenImageTransformer2DModel.forward`;
- reward: `RewardQwenImageTransformer2DModel.forward` with a precomputed `RewardCondition` in
  `attention_kwargs["reward_condition"]` (as the reward Qwen pipelines pass it).

Reward guidance (`reward_guidance_scale > 1`) doubles the batch, like any classifier-free guidance: not counted here.

Usage: python bench/dit_overhead.py [--size 1024 512] [--reward-token-dim 768] [--qwen-reward-token-dim 512]
Ends with `RESULT` lines.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FluxTransformer2DModel
from torch.utils.flop_counter import FlopCounterMode

from reward_edit_pipeline.models.reward_dit_condition import RewardCondition
from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel
from reward_edit_pipeline.models.transformer_qwenimage_reward import RewardQwenImageTransformer2DModel

FLUX_KONTEXT_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
TEXT_TOKENS = 512
QWEN_IMAGE_EDIT = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "axes_dims_rope": (16, 56, 56),
}
QWEN_TEXT_TOKENS = 256


def count_flops(function) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        function()
    return counter.get_total_flops()


def flux_inputs(size: int, device: str = "meta") -> dict[str, torch.Tensor]:
    side = size // 16
    image_tokens = side * side
    ids = torch.zeros(image_tokens, 3, device=device)
    return {
        "hidden_states": torch.zeros(1, 2 * image_tokens, FLUX_KONTEXT_DEV["in_channels"], device=device),
        "encoder_hidden_states": torch.zeros(1, TEXT_TOKENS, FLUX_KONTEXT_DEV["joint_attention_dim"], device=device),
        "pooled_projections": torch.zeros(1, FLUX_KONTEXT_DEV["pooled_projection_dim"], device=device),
        "timestep": torch.ones(1, device=device),
        "guidance": torch.full((1,), 2.5, device=device),
        "img_ids": torch.cat([ids, ids]),
        "txt_ids": torch.zeros(TEXT_TOKENS, 3, device=device),
    }


def flux_overhead(sizes: list[int], reward_token_dim: int) -> list[tuple[int, int, int, int, int]]:
    with torch.device("meta"):
        base = FluxTransformer2DModel(**FLUX_KONTEXT_DEV).eval()
        reward = RewardFluxTransformer2DModel(**FLUX_KONTEXT_DEV, reward_token_dim=reward_token_dim).eval()
    scores = torch.full((1, 3), 5.0, device="meta")
    text = torch.zeros(1, reward.config.failure_text_embed_dim, device="meta")
    conditioner_flops = count_flops(lambda: reward.reward_conditioner(scores, text))
    with torch.no_grad():
        condition = RewardCondition(reward.reward_conditioner(scores, text))
    rows = []
    for size in sizes:
        inputs = flux_inputs(size)
        base_flops = count_flops(lambda inputs=inputs: base(**inputs, return_dict=False))
        reward_flops = count_flops(
            lambda inputs=inputs: reward(
                **inputs, joint_attention_kwargs={"reward_condition": condition}, return_dict=False
            )
        )
        rows.append((size, inputs["hidden_states"].shape[1], base_flops, reward_flops, conditioner_flops))
    return rows


def qwen_inputs(size: int, device: str = "meta") -> dict:
    side = size // 16
    return {
        "hidden_states": torch.zeros(1, 2 * side * side, QWEN_IMAGE_EDIT["in_channels"], device=device),
        "encoder_hidden_states": torch.zeros(
            1, QWEN_TEXT_TOKENS, QWEN_IMAGE_EDIT["joint_attention_dim"], device=device
        ),
        "timestep": torch.ones(1, device=device),
        "img_shapes": [[(1, side, side), (1, side, side)]],
    }


def qwen_overhead(sizes: list[int], reward_token_dim: int, zero_cond_t: bool) -> list[tuple[int, int, int, int, int]]:
    from diffusers import QwenImageTransformer2DModel

    config = {**QWEN_IMAGE_EDIT, "zero_cond_t": zero_cond_t}
    with torch.device("meta"):
        base = QwenImageTransformer2DModel(**config).eval()
        reward = RewardQwenImageTransformer2DModel(**config, reward_token_dim=reward_token_dim).eval()
    scores = torch.full((1, 3), 5.0, device="meta")
    text = torch.zeros(1, reward.config.failure_text_embed_dim, device="meta")
    conditioner_flops = count_flops(lambda: reward.reward_conditioner(scores, text))
    with torch.no_grad():
        condition = RewardCondition(reward.reward_conditioner(scores, text))
    rows = []
    for size in sizes:
        inputs = qwen_inputs(size)
        base_flops = count_flops(lambda inputs=inputs: base(**inputs, return_dict=False))
        reward_flops = count_flops(
            lambda inputs=inputs: reward(**inputs, attention_kwargs={"reward_condition": condition}, return_dict=False)
        )
        rows.append((size, inputs["hidden_states"].shape[1], base_flops, reward_flops, conditioner_flops))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[1024, 512], help="edit sizes in pixels (square)")
    parser.add_argument("--reward-token-dim", type=int, default=768)
    parser.add_argument("--qwen-reward-token-dim", type=int, default=512)
    parser.add_argument("--qwen-zero-cond-t", action="store_true", help="Qwen-Image-Edit-2511 layout")
    parser.add_argument("--backbone", choices=("all", "flux-kontext", "qwen-image-edit"), default="all")
    args = parser.parse_args()
    if args.backbone in ("all", "qwen-image-edit"):
        qwen_main(args)
    if args.backbone == "qwen-image-edit":
        return
    for size, image_tokens, base_flops, reward_flops, conditioner_flops in flux_overhead(
        args.size, args.reward_token_dim
    ):
        ratio = reward_flops / base_flops
        print(
            f"flux-kontext {size}x{size}: {image_tokens} image + {TEXT_TOKENS} text tokens; base "
            f"{base_flops / 1e12:.3f} TFLOP/step, reward {reward_flops / 1e12:.3f} TFLOP/step "
            f"(+{(reward_flops - base_flops) / 1e9:.2f} GFLOP), conditioner {conditioner_flops / 1e9:.3f} GFLOP/call"
        )
        print(f"RESULT flux_kontext_{size}px_flop_ratio {ratio:.6f} target <=1.005")


def qwen_main(args: argparse.Namespace) -> None:
    variant = "qwen_image_edit_2511" if args.qwen_zero_cond_t else "qwen_image_edit"
    for size, image_tokens, base_flops, reward_flops, conditioner_flops in qwen_overhead(
        args.size, args.qwen_reward_token_dim, args.qwen_zero_cond_t
    ):
        ratio = reward_flops / base_flops
        print(
            f"{variant} {size}x{size}: {image_tokens} image + {QWEN_TEXT_TOKENS} text tokens; base "
            f"{base_flops / 1e12:.3f} TFLOP/step, reward {reward_flops / 1e12:.3f} TFLOP/step "
            f"(+{(reward_flops - base_flops) / 1e9:.2f} GFLOP), conditioner {conditioner_flops / 1e9:.3f} GFLOP/call"
        )
        print(f"RESULT {variant}_{size}px_flop_ratio {ratio:.6f} target <=1.005")


if __name__ == "__main__":
    main()
