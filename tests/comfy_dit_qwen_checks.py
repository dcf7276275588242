"""Checks of the DiT reward nodes on Qwen-Image inside a real, unmodified ComfyUI 0.3.75 (run by test_comfy_dit.py).

Usage: ``python comfy_dit_qwen_checks.py <comfyui folder> <work folder>``; prints one JSON line of measurements.

ComfyUI's own classes are used throughout: ``comfy.supported_models.QwenImage`` / ``comfy.model_base.QwenImage`` (the
model ComfyUI's loaders build), ``ModelPatcher`` (LoRA weight patches, object patches, wrappers),
``comfy.sample.sample`` (what KSampler runs), and for the text encoder ``comfy.sd.CLIP`` around ComfyUI's
``QwenImageTEModel`` / ``SDClipModel`` / ``Llama2_`` (its Qwen2.5-VL language model code). Two substitutions, both
because ComfyUI 0.3.75 fixes the model sizes:

- **UNETLoader**: model detection (``comfy/model_detection.py``) reads only ``in_channels`` and ``num_layers`` from a
  Qwen-Image checkpoint; the width (24 heads × 128) and the text width (3584) are constructor defaults, so a tiny
  checkpoint is refused (measured below: ``size mismatch``). The same ComfyUI model class is built from a tiny config.
- **text encoder**: ``Qwen25_7BVLI`` builds its language model from ``Qwen25_7BVLI_Config``, where ``head_dim``
  (128) and ``rope_dims`` are class attributes, not constructor fields, and its vision tower has a fixed width of
  1280. ``TinyQwen25VLI`` sets the tiny values on the config instance and leaves the vision tower out (failure texts
  are text only); it reaches ComfyUI's ``QwenImageTEModel`` through ComfyUI's own ``qwen25_7b_class`` model option.
  The tokenizer is ComfyUI's ``QwenImageTokenizer`` whose inner tokenizer (ComfyUI's ``qwen25_7b_tokenizer_class``
  option) is ``SDTokenizer`` with the settings of ComfyUI's ``Qwen25_7BVLITokenizer`` over the library's tiny test
  tokenizer files (ComfyUI's own vocabulary has 151k ids; the tiny text encoder has 282).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

COMFY_DIR, WORK = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(COMFY_DIR))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.model_detection  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import comfy.text_encoders.llama  # noqa: E402
import comfy.text_encoders.qwen_image  # noqa: E402
import torch  # noqa: E402
from diffusers import FluxTransformer2DModel, QwenImageEditPipeline, QwenImageTransformer2DModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from reward_edit_pipeline.comfy_nodes.dit_patch import REWARD_MODEL_COND, pack_reward_condition  # noqa: E402
from reward_edit_pipeline.comfy_nodes.nodes_dit import encode_failure_text, run_adapter_loader  # noqa: E402
from reward_edit_pipeline.train.dit_qwen import QwenImageEditAdapter  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from training_data import write_official_rewards, write_triplet_folder  # noqa: E402  (tests/, the script's folder)
from transformers import Qwen2Tokenizer  # noqa: E402

from reward_edit_pipeline.cli import main as cli_main  # noqa: E402
from reward_edit_pipeline.models.reward_dit_condition import RewardCondition  # noqa: E402
from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel  # noqa: E402
from reward_edit_pipeline.models.transformer_qwenimage_reward import RewardQwenImageTransformer2DModel  # noqa: E402
from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import RewardQwenImageEditPipeline  # noqa: E402
from reward_edit_pipeline.pipelines.reward_dit_common import read_reward_adapter_lora_config, save_reward_adapter  # noqa: E402
from reward_edit_pipeline.testing_dit import get_dummy_flux_transformer_config  # noqa: E402
from reward_edit_pipeline.testing_qwenimage import (  # noqa: E402
    QWEN_TEXT_WIDTH,
    get_dummy_qwenimage_transformer_config,
    make_dummy_qwen_edit_pipeline,
    randomize_reward_modules,
    save_dummy_qwen_edit_folder,
)

torch.manual_seed(0)
LATENT_CHANNELS = 16  # the Wan 2.1 latent format ComfyUI's QwenImage uses normalises 16 channels
DIFFUSERS_CONFIG = {**get_dummy_qwenimage_transformer_config(), "in_channels": 4 * LATENT_CHANNELS}
DIFFUSERS_CONFIG["out_channels"] = LATENT_CHANNELS
del DIFFUSERS_CONFIG["zero_cond_t"]  # not a ComfyUI 0.3.75 option (reported below)
COMFY_CONFIG = {"image_model": "qwen_image", **DIFFUSERS_CONFIG}


def comfy_patcher(state: dict[str, torch.Tensor], config: dict = COMFY_CONFIG) -> comfy.model_patcher.ModelPatcher:
    """ComfyUI's QwenImage model from a tiny config; diffusers' keys are ComfyUI's keys for Qwen-Image."""
    model_config = comfy.supported_models.QwenImage(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    model.diffusion_model.load_state_dict(state, strict=True)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def write_adapter(folder: Path, wrapped: torch.nn.Module, pipeline_class: type) -> None:
    """What `reward-edit train --backbone qwen-image-edit` writes into reward_lora/ (the trainer's own writer)."""
    save_reward_adapter(folder, pipeline_class, wrapped)


report: dict[str, object] = {}

# ------------------------------------------------------------------------------------------------ UNETLoader
base = QwenImageTransformer2DModel(**DIFFUSERS_CONFIG).eval()
base_state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
checkpoint = WORK / "tiny_qwen_image.safetensors"
save_file({name: tensor.contiguous() for name, tensor in base_state.items()}, str(checkpoint))
detected = comfy.model_detection.detect_unet_config(base_state, "")
report["unet_detection_reads"] = sorted(detected)
try:
    comfy.sd.load_diffusion_model(str(checkpoint))  # what UNETLoader calls
    report["unet_loader_tiny_error"] = None
except RuntimeError as error:
    report["unet_loader_tiny_error"] = str(error).splitlines()[1].strip()[:200]
report["comfy_has_zero_cond_t"] = any(
    word in (COMFY_DIR / "comfy" / "ldm" / "qwen_image" / "model.py").read_text()
    for word in ("zero_cond", "timestep_zero")
)

# ------------------------------------------------------------------------------------------------ models and inputs
zero_wrapped = RewardQwenImageTransformer2DModel.from_transformer(base, reward_init="zero", reward_token_dim=20).eval()
write_adapter(WORK / "zero_adapter", zero_wrapped, QwenImageEditPipeline)

trained = RewardQwenImageTransformer2DModel.from_transformer(
    copy.deepcopy(base), reward_init="default", reward_token_dim=20
)
randomize_reward_modules(trained, seed=1, std=0.3)  # a "trained" adapter: non-zero values, global path and LoRA
lora_targets = QwenImageEditAdapter().lora_target_modules(trained)  # the trainer's own target list
trained.add_adapter(LoraConfig(r=4, lora_alpha=10, target_modules=lora_targets, init_lora_weights=True))  # α ≠ rank
with torch.no_grad():
    for name, parameter in trained.named_parameters():
        if "lora_B" in name:
            parameter.normal_(0.0, 0.1)
trained.eval()
write_adapter(WORK / "trained_adapter", trained, QwenImageEditPipeline)

flux = RewardFluxTransformer2DModel.from_transformer(
    FluxTransformer2DModel(**get_dummy_flux_transformer_config()).eval(), reward_token_dim=20
)
write_adapter(WORK / "flux_adapter", flux, QwenImageEditPipeline)

batch, height, width, text_tokens = 2, 8, 8, 5
generator = torch.Generator().manual_seed(1)
x = torch.randn(batch, LATENT_CHANNELS, 1, height, width, generator=generator)
reference = torch.randn(batch, LATENT_CHANNELS, 1, height, width, generator=generator)
context = torch.randn(batch, text_tokens, QWEN_TEXT_WIDTH, generator=generator)
sigma = torch.tensor([0.7, 0.7])
scores = [(5.0, 5.0, 5.0), (1.0, 2.5, 0.0)]
failure_embeds = torch.randn(batch, QWEN_TEXT_WIDTH, generator=generator)
image_tokens = (height // 2) * (width // 2)


def packed_rows(scale: float, embeds: torch.Tensor = failure_embeds) -> torch.Tensor:
    return torch.cat([pack_reward_condition(scores[row], embeds[row], scale) for row in range(batch)])


def pack_tokens(latents: torch.Tensor) -> torch.Tensor:
    b, c, _, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_tokens(tokens: torch.Tensor, channels: int) -> torch.Tensor:
    b, h, w = tokens.shape[0], height // 2, width // 2
    return tokens.reshape(b, h, w, channels, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, 1, height, width)


def diffusers_output(
    model: torch.nn.Module, condition: RewardCondition | None, x: torch.Tensor = x, reference: torch.Tensor = reference
) -> torch.Tensor:
    """The diffusers transformer on the Qwen-Image-Edit layout (target tokens, then the reference's, as a 2nd image)."""
    kwargs = {} if condition is None else {"attention_kwargs": {"reward_condition": condition}}
    with torch.no_grad():
        out = model(
            hidden_states=torch.cat([pack_tokens(x), pack_tokens(reference)], dim=1),
            encoder_hidden_states=context,
            timestep=sigma,
            img_shapes=[[(1, height // 2, width // 2), (1, height // 2, width // 2)]] * batch,
            **kwargs,
        ).sample
    return unpack_tokens(out[:, :image_tokens], x.shape[1])


def library_condition(model: RewardQwenImageTransformer2DModel, scale: float) -> RewardCondition:
    embeddings = model.compute_reward_condition(torch.tensor(scores), failure_embeds)
    null = None
    if scale > 1.0:
        null = model.compute_reward_condition(torch.tensor(scores), failure_embeds, torch.ones(batch, dtype=torch.bool))
    return RewardCondition(embeddings, null, scale)


def comfy_output(
    patcher: comfy.model_patcher.ModelPatcher,
    packed: torch.Tensor | None,
    x: torch.Tensor = x,
    reference: torch.Tensor = reference,
) -> torch.Tensor:
    """ComfyUI's Qwen-Image forward through the patcher (object patches, LoRA weights and wrappers applied)."""
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        extra = {} if packed is None else {REWARD_MODEL_COND: packed}
        transformer_options = patcher.model_options.get("transformer_options", {}).copy()
        # what CFGGuider.outer_sample does before sampling: the patcher's wrappers join the transformer options
        transformer_options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
        with torch.no_grad():
            return patcher.model.diffusion_model(
                x, sigma, context, ref_latents=[reference], transformer_options=transformer_options, **extra
            )
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


def error_of(function, *args) -> str | None:
    try:
        function(*args)
    except ValueError as error:
        return str(error)
    return None


plain = comfy_patcher(base_state)
plain_out = comfy_output(plain, None)
report["comfy_vs_diffusers_base_max_abs"] = (plain_out - diffusers_output(base, None)).abs().max().item()

zero = run_adapter_loader(plain, str(WORK / "zero_adapter"), 1.0)
report["zero_adapter_vs_plain_max_abs"] = (comfy_output(zero, packed_rows(1.0)) - plain_out).abs().max().item()
report["zero_adapter_scale_2_vs_plain_max_abs"] = (comfy_output(zero, packed_rows(2.0)) - plain_out).abs().max().item()
report["plain_after_unpatch_max_abs"] = (comfy_output(plain, None) - plain_out).abs().max().item()

import reward_edit_pipeline.comfy_nodes as pack  # noqa: E402

report["node_api"] = pack.NODE_API
loader_node = pack.NODE_CLASS_MAPPINGS["RewardDiTAdapterLoader"]
patched = loader_node.execute(model=plain, reward_adapter=str(WORK / "trained_adapter"), lora_strength=1.0).args[0]
report["lora_patches"] = len(patched.patches)
report["lora_targets"] = len(lora_targets)
report["object_patches"] = len(patched.object_patches)
for scale in (1.0, 2.0):
    library = diffusers_output(trained, library_condition(trained, scale))
    ours = comfy_output(patched, packed_rows(scale))
    report[f"trained_vs_library_max_abs_scale_{scale}"] = (ours - library).abs().max().item()
    report[f"trained_vs_plain_max_abs_scale_{scale}"] = (ours - plain_out).abs().max().item()
changed = packed_rows(1.0)
changed[1] = pack_reward_condition((0.0, 0.0, 0.0), failure_embeds[0], 1.0)[0]
single = comfy_output(patched, packed_rows(1.0))
row_outputs = comfy_output(patched, changed)
report["other_row_reward_row0_max_abs"] = (row_outputs[0] - single[0]).abs().max().item()
report["other_row_reward_row1_max_abs"] = (row_outputs[1] - single[1]).abs().max().item()
report["missing_condition_error"] = error_of(comfy_output, patched, None)
report["clip_l_width_error"] = error_of(comfy_output, patched, packed_rows(1.0, torch.randn(batch, 24)))
report["flux_adapter_on_qwen_error"] = error_of(run_adapter_loader, plain, str(WORK / "flux_adapter"), 1.0)

# ------------------------------------------------------------------------------------------------ a real trainer run
# `reward-edit train --backbone qwen-image-edit`, 3 steps on the tiny stock Qwen-Image-Edit folder (4 latent channels)
stock = save_dummy_qwen_edit_folder(WORK / "stock")
write_official_rewards(WORK / "rewards.json", write_triplet_folder(WORK / "data", 2))
report["train_exit_status"] = cli_main([
    "train", "--backbone", "qwen-image-edit", "--pretrained_model_name_or_path", str(stock),
    "--train_data_dir", str(WORK / "data"), "--rewards", str(WORK / "rewards.json"), "--output_dir", str(WORK / "run"),
    "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "3", "--checkpointing_steps", "100",
    "--learning_rate", "1e-2", "--lora_rank", "4", "--lora_alpha", "16", "--reward_token_dim", "16",
    "--mixed_precision", "no",
    "--dataloader_num_workers", "0", "--report_to", "none",
])  # fmt: skip
run_adapter = WORK / "run" / "reward_lora"
library_run = RewardQwenImageEditPipeline.from_reward_adapter(stock, run_adapter).transformer.eval()
stock_transformer = QwenImageTransformer2DModel.from_pretrained(stock / "transformer").eval()
stock_config = {
    "image_model": "qwen_image",
    **{k: stock_transformer.config[k] for k in COMFY_CONFIG if k != "image_model"},
}
stock_patcher = comfy_patcher(stock_transformer.state_dict(), stock_config)
x_run, reference_run = x[:, :4].contiguous(), reference[:, :4].contiguous()
run_patched = run_adapter_loader(stock_patcher, str(run_adapter), 1.0)
run_library = diffusers_output(library_run, library_condition(library_run, 1.0), x_run, reference_run)
run_ours = comfy_output(run_patched, packed_rows(1.0), x_run, reference_run)
run_plain = comfy_output(stock_patcher, None, x_run, reference_run)
report["trainer_lora_patches"] = len(run_patched.patches)
report["trainer_adapter_vs_library_max_abs"] = (run_ours - run_library).abs().max().item()
report["trainer_adapter_vs_plain_max_abs"] = (run_ours - run_plain).abs().max().item()
# against the trainer's own result, which never went through the LoRA file: the saved pipeline, LoRA merged in memory
merged_run = RewardQwenImageEditPipeline.from_pretrained(WORK / "run").transformer.eval()
run_merged = diffusers_output(merged_run, library_condition(merged_run, 1.0), x_run, reference_run)
report["trainer_adapter_vs_merged_max_abs"] = (run_ours - run_merged).abs().max().item()
report["trainer_lora_config"] = {k: read_reward_adapter_lora_config(run_adapter)[k] for k in ("r", "lora_alpha")}

# ------------------------------------------------------------------------------------------------ the text encoder
library_pipe = make_dummy_qwen_edit_pipeline()
library_tokenizer, library_text_encoder = library_pipe.tokenizer, library_pipe.text_encoder
library_tokenizer.save_pretrained(WORK / "tokenizer")
text_config = library_text_encoder.config.text_config
PAD = library_tokenizer.convert_tokens_to_ids("<|endoftext|>")


class TinyQwen25VLI(comfy.text_encoders.llama.Qwen25_7BVLI):
    """ComfyUI's Qwen2.5-VL text model (``Llama2_``) at the library's tiny text width, without the vision tower."""

    def __init__(self, config_dict: dict, dtype: torch.dtype, device: torch.device, operations: object) -> None:
        torch.nn.Module.__init__(self)
        config = comfy.text_encoders.llama.Qwen25_7BVLI_Config(
            vocab_size=text_config.vocab_size,
            hidden_size=text_config.hidden_size,
            intermediate_size=text_config.intermediate_size,
            num_hidden_layers=text_config.num_hidden_layers,
            num_attention_heads=text_config.num_attention_heads,
            num_key_value_heads=text_config.num_key_value_heads,
            max_position_embeddings=text_config.max_position_embeddings,
            rms_norm_eps=text_config.rms_norm_eps,
            rope_theta=text_config.rope_parameters["rope_theta"],
        )
        config.head_dim = text_config.hidden_size // text_config.num_attention_heads
        config.rope_dims = list(text_config.rope_parameters["mrope_section"])
        self.num_layers = config.num_hidden_layers
        self.model = comfy.text_encoders.llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
        self.dtype = dtype


class TinyQwenClipModel(comfy.sd1_clip.SDClipModel):
    """ComfyUI's ``Qwen25_7BVLIModel`` settings with `TinyQwen25VLI` and the tiny tokenizer's pad id."""

    def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=True, model_options={}):  # noqa: B006 (ComfyUI's signature)
        super().__init__(
            device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config={}, dtype=dtype,
            special_tokens={"pad": PAD}, layer_norm_hidden_state=False, model_class=TinyQwen25VLI,
            enable_attention_masks=attention_mask, return_attention_masks=attention_mask, model_options=model_options,
        )  # fmt: skip


class TinyQwenSDTokenizer(comfy.sd1_clip.SDTokenizer):
    """ComfyUI's ``Qwen25_7BVLITokenizer`` settings over the library's tiny tokenizer files."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006 (ComfyUI's signature)
        super().__init__(
            str(WORK / "tokenizer"), pad_with_end=False, embedding_size=QWEN_TEXT_WIDTH, embedding_key="qwen25_7b",
            tokenizer_class=Qwen2Tokenizer, has_start_token=False, has_end_token=False, pad_to_max_length=False,
            max_length=99999999, min_length=1, pad_token=PAD, tokenizer_data=tokenizer_data,
        )  # fmt: skip


clip = comfy.sd.CLIP(  # ComfyUI's Qwen-Image tokenizer and text encoder classes, the tiny parts by their options
    comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.qwen_image.QwenImageTokenizer, comfy.text_encoders.qwen_image.te()
    ),
    tokenizer_data={"qwen25_7b_tokenizer_class": TinyQwenSDTokenizer},
    model_options={"qwen25_7b_class": TinyQwenClipModel, "dtype": torch.float32},
)
language_model = {
    name.replace("model.language_model.", "model.", 1): tensor
    for name, tensor in library_text_encoder.state_dict().items()
    if name.startswith("model.language_model.")
}
clip.cond_stage_model.qwen25_7b.transformer.load_state_dict(language_model, strict=True)
report["clip_is_qwen_image_te"] = type(clip.cond_stage_model).__mro__[1].__name__


texts = ["None; None; None", "the sky is unchanged; None; blurry", "the cat is still there " * 20]
library_embeds = library_pipe.encode_failure_text(texts, torch.device("cpu"))
comfy_embeds = torch.cat([encode_failure_text(clip, text) for text in texts])
report["failure_text_tokens"] = [len(library_tokenizer(text).input_ids) for text in texts]
report["failure_text_pooling_max_abs"] = (comfy_embeds - library_embeds).abs().max().item()
report["failure_text_blank_is_no_failure"] = torch.equal(encode_failure_text(clip, "  "), comfy_embeds[:1])
_, template_pooled = clip.encode_from_tokens(clip.tokenize(texts[1]), return_pooled=True)
report["comfy_qwen_pooled_output"] = None if template_pooled is None else list(template_pooled.shape)

# ------------------------------------------------------------------------------------------------ KSampler's path
condition_node = pack.NODE_CLASS_MAPPINGS["RewardDiTCondition"]


def conditioning(following: float, failure_text: str = "") -> list:
    base_cond = [[torch.randn(1, text_tokens, QWEN_TEXT_WIDTH, generator=torch.Generator().manual_seed(7)), {
        "reference_latents": [reference[:1]],
    }]]  # fmt: skip
    return condition_node.execute(
        conditioning=base_cond, clip=clip, following=following, preserving=5.0, quality=5.0,
        reward_guidance_scale=1.0, failure_text=failure_text,
    ).args[0]  # fmt: skip


def sample(model: comfy.model_patcher.ModelPatcher, positive: list, negative: list, cfg: float) -> torch.Tensor:
    noise = torch.randn(1, LATENT_CHANNELS, 1, height, width, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, LATENT_CHANNELS, 1, height, width)
    return comfy.sample.sample(model, noise, 2, cfg, "euler", "simple", positive, negative, latent, denoise=1.0, seed=3)


first = sample(patched, conditioning(5.0), conditioning(0.0, "blurry"), 1.0)
other = sample(patched, conditioning(0.0, "blurry"), conditioning(0.0, "blurry"), 1.0)
other_text = sample(patched, conditioning(5.0, "the sky is unchanged"), conditioning(0.0, "blurry"), 1.0)
again = sample(patched, conditioning(5.0), conditioning(0.0, "blurry"), 1.0)
cfg_run = sample(patched, conditioning(5.0), conditioning(0.0, "blurry"), 2.0)
zero_run = sample(zero, conditioning(5.0), conditioning(0.0, "blurry"), 2.0)
plain_cond = [[torch.randn(1, text_tokens, QWEN_TEXT_WIDTH, generator=torch.Generator().manual_seed(7)), {
    "reference_latents": [reference[:1]],
}]]  # fmt: skip
plain_run = sample(plain, plain_cond, plain_cond, 2.0)
report["ksampler_shape"] = list(first.shape)
report["ksampler_finite"] = bool(torch.isfinite(first).all() and torch.isfinite(cfg_run).all())
report["ksampler_other_reward_max_abs"] = (first - other).abs().max().item()
report["ksampler_other_failure_text_max_abs"] = (first - other_text).abs().max().item()
report["ksampler_repeat_max_abs"] = (first - again).abs().max().item()
report["ksampler_cfg_vs_cfg1_max_abs"] = (cfg_run - first).abs().max().item()
report["ksampler_zero_adapter_vs_plain_max_abs"] = (zero_run - plain_run).abs().max().item()
report["ksampler_negative_without_reward_error"] = error_of(sample, patched, conditioning(5.0), plain_cond, 2.0)
print(json.dumps(report))
