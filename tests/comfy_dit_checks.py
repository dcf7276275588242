"""Checks of the DiT reward nodes inside a real, unmodified ComfyUI 0.3.75 (run as a script by test_comfy_dit.py).

Usage: ``python comfy_dit_checks.py <comfyui folder> <work folder>``; prints one JSON line of measurements.

ComfyUI's own classes are used throughout: ``comfy.supported_models.Flux`` / ``comfy.model_base.Flux`` (the FLUX
model ComfyUI's loaders build), ``ModelPatcher`` (LoRA weight patches, object patches, wrappers),
``comfy.sample.sample`` (what KSampler runs). Only the checkpoint *loader* is bypassed: ComfyUI 0.3.75 detects a FLUX
checkpoint with 24 heads of width 128 hard-coded (``comfy/model_detection.py``), so a tiny checkpoint cannot go
through UNETLoader; the same ComfyUI model class is built here from a tiny config instead.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

COMFY_DIR, WORK = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(COMFY_DIR))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
import torch  # noqa: E402
from diffusers import FluxKontextPipeline, FluxTransformer2DModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from reward_edit_pipeline.comfy_nodes.dit_patch import LORA_FILE, REWARD_MODEL_COND, pack_reward_condition  # noqa: E402
from reward_edit_pipeline.comfy_nodes.nodes_dit import run_adapter_loader  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from reward_edit_pipeline.models.reward_dit_condition import RewardCondition  # noqa: E402
from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel  # noqa: E402
from reward_edit_pipeline.pipelines.reward_dit_common import save_reward_adapter  # noqa: E402

torch.manual_seed(0)
LATENT_CHANNELS, HEADS, HEAD_DIM, TEXT_DIM, POOLED_DIM, DOUBLE, SINGLE = 16, 2, 16, 32, 24, 2, 1
DIFFUSERS_CONFIG = {
    "patch_size": 1,
    "in_channels": LATENT_CHANNELS * 4,
    "num_layers": DOUBLE,
    "num_single_layers": SINGLE,
    "attention_head_dim": HEAD_DIM,
    "num_attention_heads": HEADS,
    "joint_attention_dim": TEXT_DIM,
    "pooled_projection_dim": POOLED_DIM,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}
COMFY_CONFIG = {
    "image_model": "flux",
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "vec_in_dim": POOLED_DIM,
    "context_in_dim": TEXT_DIM,
    "hidden_size": HEADS * HEAD_DIM,
    "mlp_ratio": 4.0,
    "num_heads": HEADS,
    "depth": DOUBLE,
    "depth_single_blocks": SINGLE,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}


def to_comfy_state_dict(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers FLUX keys → ComfyUI keys with ComfyUI's own map (`comfy.utils.flux_to_diffusers`)."""
    key_map = comfy.utils.flux_to_diffusers(COMFY_CONFIG)
    out: dict[str, torch.Tensor] = {}
    for source, target in key_map.items():
        if source not in diffusers_state:
            continue
        tensor = diffusers_state[source]
        if isinstance(target, str):
            out[target] = tensor.clone()
        elif target[1] is None:  # (key, None, function): e.g. swap_scale_shift
            out[target[0]] = target[2](tensor).clone()
        else:
            key, (dim, start, size) = target
            rows = out.setdefault(key, {})
            rows[start] = tensor
    for key, value in list(out.items()):
        if isinstance(value, dict):
            out[key] = torch.cat([value[start] for start in sorted(value)], dim=0)
    return out


def comfy_patcher(
    state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> comfy.model_patcher.ModelPatcher:
    model_config = comfy.supported_models.Flux(dict(COMFY_CONFIG))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device="cpu")
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=True), None
    del missing, unexpected
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def write_adapter(folder: Path, wrapped: RewardFluxTransformer2DModel) -> None:
    """What `reward-edit train --backbone flux-kontext` writes into reward_lora/ (the trainer's own writer)."""
    save_reward_adapter(folder, FluxKontextPipeline, wrapped)


def write_adapter_without_lora_settings(source: Path, folder: Path) -> None:
    """`source` as the trainer wrote it before the LoRA settings went into the file header (alpha not recorded)."""
    shutil.copytree(source, folder)
    lora_path = folder / LORA_FILE
    save_file(load_file(str(lora_path)), str(lora_path), metadata={"format": "pt"})


class PooledClip:
    """Stands in for a ComfyUI CLIP object (tokenize / encode_from_tokens): a fixed pooled vector per text."""

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens(self, tokens: str, return_pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(sum(map(ord, tokens)) % 10_000)
        return torch.zeros(1, 4, TEXT_DIM), torch.randn(1, POOLED_DIM, generator=generator)


# ------------------------------------------------------------------------------------------------ models and inputs
base = FluxTransformer2DModel(**DIFFUSERS_CONFIG).eval()
base_state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
zero_wrapped = RewardFluxTransformer2DModel.from_transformer(base, reward_init="zero", reward_token_dim=20).eval()
write_adapter(WORK / "zero_adapter", zero_wrapped)

trained = RewardFluxTransformer2DModel.from_transformer(
    FluxTransformer2DModel(**DIFFUSERS_CONFIG).eval(), reward_init="default", reward_token_dim=20
)
trained.load_state_dict(base_state, strict=False)
with torch.no_grad():  # a "trained" adapter: non-zero gates, global path and LoRA
    for attention in trained.reward_attention:
        attention.gate.normal_(0.0, 0.5)
    for parameter in trained.reward_conditioner.parameters():
        parameter.normal_(0.0, 0.2)
targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj"]
LORA_RANK, LORA_ALPHA = 4, 12.0  # alpha ≠ rank: ComfyUI must apply the scale 3 the model was trained with
trained.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=targets, init_lora_weights=True))
with torch.no_grad():
    for name, parameter in trained.named_parameters():
        if "lora_B" in name:
            parameter.normal_(0.0, 0.1)
trained.eval()
write_adapter(WORK / "trained_adapter", trained)
write_adapter_without_lora_settings(WORK / "trained_adapter", WORK / "old_adapter")

batch, height, width, text_tokens = 2, 8, 8, 5
generator = torch.Generator().manual_seed(1)
x = torch.randn(batch, LATENT_CHANNELS, height, width, generator=generator)
reference = torch.randn(batch, LATENT_CHANNELS, height, width, generator=generator)
context = torch.randn(batch, text_tokens, TEXT_DIM, generator=generator)
pooled = torch.randn(batch, POOLED_DIM, generator=generator)
sigma = torch.tensor([0.7, 0.7])
guidance = torch.tensor([2.5, 2.5])
scores = [(5.0, 5.0, 5.0), (1.0, 2.5, 0.0)]
failure_embeds = torch.randn(batch, POOLED_DIM, generator=generator)


def packed_rows(scale: float) -> torch.Tensor:
    return torch.cat([pack_reward_condition(scores[row], failure_embeds[row], scale) for row in range(batch)])


def pack_tokens(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_tokens(tokens: torch.Tensor) -> torch.Tensor:
    b = tokens.shape[0]
    h, w = height // 2, width // 2
    return tokens.reshape(b, h, w, LATENT_CHANNELS, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, height, width)


def image_ids(first: float) -> torch.Tensor:
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


def diffusers_output(model: RewardFluxTransformer2DModel, scale: float) -> torch.Tensor:
    """The library's reward transformer on the Kontext layout (target tokens, then reference tokens with id 1)."""
    embeddings = model.compute_reward_condition(torch.tensor(scores), failure_embeds)
    null = None
    if scale > 1.0:
        null = model.compute_reward_condition(torch.tensor(scores), failure_embeds, torch.ones(batch, dtype=torch.bool))
    with torch.no_grad():
        out = model(
            hidden_states=torch.cat([pack_tokens(x), pack_tokens(reference)], dim=1),
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=sigma,
            img_ids=torch.cat([image_ids(0.0), image_ids(1.0)]),
            txt_ids=torch.zeros(text_tokens, 3),
            guidance=guidance,
            joint_attention_kwargs={"reward_condition": RewardCondition(embeddings, null, scale)},
        ).sample
    return unpack_tokens(out[:, : (height // 2) * (width // 2)])


def comfy_output(
    patcher: comfy.model_patcher.ModelPatcher, packed: torch.Tensor | None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """ComfyUI's Flux forward through the patcher (object patches, LoRA weights and wrappers applied); the inputs in
    `dtype`, as ``BaseModel._apply_model`` casts them for a model of that dtype."""
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        extra = {} if packed is None else {REWARD_MODEL_COND: packed}
        transformer_options = patcher.model_options.get("transformer_options", {}).copy()
        # what CFGGuider.outer_sample does before sampling: the patcher's wrappers join the transformer options
        transformer_options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
        with torch.no_grad():
            return patcher.model.diffusion_model(
                x.to(dtype), sigma, context.to(dtype), y=pooled.to(dtype), guidance=guidance,
                ref_latents=[reference.to(dtype)],
                transformer_options=transformer_options, **extra,
            )  # fmt: skip
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


report: dict[str, object] = {}
plain = comfy_patcher(to_comfy_state_dict(base_state))
plain_out = comfy_output(plain, None)
with torch.no_grad():
    stock = base(
        hidden_states=torch.cat([pack_tokens(x), pack_tokens(reference)], dim=1),
        encoder_hidden_states=context,
        pooled_projections=pooled,
        timestep=sigma,
        img_ids=torch.cat([image_ids(0.0), image_ids(1.0)]),
        txt_ids=torch.zeros(text_tokens, 3),
        guidance=guidance,
    ).sample
report["comfy_vs_diffusers_base_max_abs"] = (plain_out - unpack_tokens(stock[:, :16])).abs().max().item()

zero = run_adapter_loader(plain, str(WORK / "zero_adapter"), 1.0)
report["zero_adapter_vs_plain_max_abs"] = (comfy_output(zero, packed_rows(1.0)) - plain_out).abs().max().item()
report["plain_after_unpatch_max_abs"] = (comfy_output(plain, None) - plain_out).abs().max().item()

# the node classes ComfyUI registers (V3 here: comfy_api.v0_0_2 exists), declared like their V1 twins
import reward_edit_pipeline.comfy_nodes as pack  # noqa: E402
from reward_edit_pipeline.comfy_nodes.nodes_dit import V1_DIT_NODES  # noqa: E402


def declared(inputs: dict) -> dict:
    return {section: {name: [kind, *(entry or [{}])] for name, (kind, *entry) in items.items()}
            for section, items in inputs.items()}  # fmt: skip


report["node_api"] = pack.NODE_API
report["v1_v3_same_declarations"] = all(
    declared(pack.NODE_CLASS_MAPPINGS[v1.__name__].INPUT_TYPES(include_hidden=False)) == declared(v1.INPUT_TYPES())
    and list(pack.NODE_CLASS_MAPPINGS[v1.__name__].RETURN_TYPES) == list(v1.RETURN_TYPES)
    for v1 in V1_DIT_NODES
)
loader_node = pack.NODE_CLASS_MAPPINGS["RewardDiTAdapterLoader"]
patched = loader_node.execute(model=plain, reward_adapter=str(WORK / "trained_adapter"), lora_strength=1.0).args[0]
report["lora_patches"] = len(patched.patches)
report["object_patches"] = sorted(patched.object_patches)
for scale in (1.0, 2.0):
    library = diffusers_output(trained, scale)
    ours = comfy_output(patched, packed_rows(scale))
    report[f"trained_vs_library_max_abs_scale_{scale}"] = (ours - library).abs().max().item()
    report[f"trained_vs_plain_max_abs_scale_{scale}"] = (ours - plain_out).abs().max().item()
# a second adapter on an already patched model is refused (its wrapper would take the other's reward rows)
try:
    loader_node.execute(model=patched, reward_adapter=str(WORK / "trained_adapter"), lora_strength=1.0)
    report["chained_adapter_error"] = None
except ValueError as error:
    report["chained_adapter_error"] = str(error)
# a bf16 model (ComfyUI's default dtype for FLUX on most GPUs): the float32 reward modules' outputs join its dtype
bf16_patched = run_adapter_loader(comfy_patcher(to_comfy_state_dict(base_state), torch.bfloat16),
                                  str(WORK / "trained_adapter"), 1.0)  # fmt: skip
for scale in (1.0, 2.0):
    library = diffusers_output(trained, scale)
    bf16_out = comfy_output(bf16_patched, packed_rows(scale), torch.bfloat16)
    report[f"bf16_dtype_scale_{scale}"] = str(bf16_out.dtype)
    report[f"bf16_vs_library_relative_scale_{scale}"] = (
        (bf16_out.float() - library).abs().max() / library.abs().max()
    ).item()
    report[f"bf16_plain_vs_library_relative_scale_{scale}"] = (
        (plain_out - library).abs().max() / library.abs().max()
    ).item()
# an adapter written before the alpha was recorded: applied at alpha = rank, by ComfyUI and by the library alike
old_patched = loader_node.execute(model=plain, reward_adapter=str(WORK / "old_adapter"), lora_strength=1.0).args[0]
old_ours = comfy_output(old_patched, packed_rows(1.0))
trained.set_adapters(["default"], weights=[LORA_RANK / LORA_ALPHA])
report["old_adapter_vs_library_at_alpha_rank_max_abs"] = (old_ours - diffusers_output(trained, 1.0)).abs().max().item()
trained.set_adapters(["default"], weights=[1.0])
report["old_adapter_vs_trained_scale_max_abs"] = (old_ours - diffusers_output(trained, 1.0)).abs().max().item()
changed = packed_rows(1.0)
changed[1] = pack_reward_condition((0.0, 0.0, 0.0), failure_embeds[0], 1.0)[0]
single = comfy_output(patched, packed_rows(1.0))
row_outputs = comfy_output(patched, changed)
report["other_row_reward_row0_max_abs"] = (row_outputs[0] - single[0]).abs().max().item()
report["other_row_reward_row1_max_abs"] = (row_outputs[1] - single[1]).abs().max().item()
try:
    comfy_output(patched, None)
    report["missing_condition_error"] = None
except ValueError as error:
    report["missing_condition_error"] = str(error)

# ------------------------------------------------------------------------------------------------ KSampler's path
clip = PooledClip()


def conditioning(following: float, failure_text: str = "") -> list:
    base_cond = [[torch.randn(1, text_tokens, TEXT_DIM, generator=torch.Generator().manual_seed(7)), {
        "pooled_output": torch.randn(1, POOLED_DIM, generator=torch.Generator().manual_seed(8)),
        "guidance": 2.5,
        "reference_latents": [reference[:1]],
    }]]  # fmt: skip
    node = pack.NODE_CLASS_MAPPINGS["RewardDiTCondition"]
    return node.execute(
        conditioning=base_cond, clip=clip, following=following, preserving=5.0, quality=5.0,
        reward_guidance_scale=1.0, failure_text=failure_text,
    ).args[0]  # fmt: skip


def sample(positive: list, negative: list, cfg: float) -> torch.Tensor:
    noise = torch.randn(1, LATENT_CHANNELS, height, width, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, LATENT_CHANNELS, height, width)
    return comfy.sample.sample(
        patched, noise, 2, cfg, "euler", "simple", positive, negative, latent, denoise=1.0, seed=3
    )


rows_cond = conditioning(4.3)[0][1]["model_conds"][REWARD_MODEL_COND]
batched = rows_cond.process_cond(batch_size=2).concat([rows_cond.process_cond(batch_size=1)])
report["batched_rows_not_a_tensor"] = not hasattr(batched, "dtype")
report["batched_rows"] = [batched.rows.shape[0], str(batched.rows.dtype), batched.rows[0, 0].item()]
first = sample(conditioning(5.0), conditioning(0.0, "blurry"), 1.0)
other = sample(conditioning(0.0, "blurry"), conditioning(0.0, "blurry"), 1.0)
again = sample(conditioning(5.0), conditioning(0.0, "blurry"), 1.0)
cfg_run = sample(conditioning(5.0), conditioning(0.0, "blurry"), 2.0)
report["ksampler_finite"] = bool(torch.isfinite(first).all() and torch.isfinite(cfg_run).all())
report["ksampler_other_reward_max_abs"] = (first - other).abs().max().item()
report["ksampler_repeat_max_abs"] = (first - again).abs().max().item()
report["ksampler_cfg_vs_cfg1_max_abs"] = (cfg_run - first).abs().max().item()
try:
    plain_negative = [[torch.zeros(1, text_tokens, TEXT_DIM), {"pooled_output": torch.zeros(1, POOLED_DIM)}]]
    sample(conditioning(5.0), plain_negative, 2.0)
    report["ksampler_negative_without_reward_error"] = None
except ValueError as error:
    report["ksampler_negative_without_reward_error"] = str(error)
print(json.dumps(report))
