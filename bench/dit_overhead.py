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

Reward guidance (`reward_guidance_scale > 1`) doubles the batch, like any classifier-free guidance: not counted here.

Usage: python bench/dit_overhead.py [--size 1024 512] [--reward-token-dim 768]
Ends with `RESULT` lines.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FluxTransformer2DModel
from torch.utils.flop_counter import FlopCounterMode

from reward_edit_pipeline.models.reward_dit_condition import RewardCondition
from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[1024, 512], help="edit sizes in pixels (square)")
    parser.add_argument("--reward-token-dim", type=int, default=768)
    args = parser.parse_args()
    for size, image_tokens, base_flops, reward_flops, conditioner_flops in flux_overhead(
        args.size, args.reward_token_dim
    ):
        ratio = reward_flops / base_flops
        print(
            f"flux-kontext {size}x{size}: {image_tokens} image + {TEXT_TOKENS} text tokens; base "
            f"{base_flops / 1e12:.3f} TFLOP/step, reward {reward_flops / 1e12:.3f} TFLOP/step "
            f"(+{(reward_flops - base_flops) / 1e9:.2f} GFLOP), conditioner {conditioner_flops / 1e9:.3f} GFLOP/call"
        )
        print(
            f"RESULT flux_kontext_{size}px_flop_ratio={ratio:.6f} goal<=1.005 {'met' if ratio <= 1.005 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
