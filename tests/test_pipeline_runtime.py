"""RewardEditPipeline at run time: conditions once per call, and what diffusers users combine with a pipeline (LoRA,
attention processors, offload, VAE slicing/tiling, step callbacks, reduced precision, torch.compile)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

from reward_edit_pipeline import RewardEditPipeline
from reward_edit_pipeline.testing import get_dummy_components, make_dummy_pipeline

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def dummy_image(seed: int = 0, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def edit(pipe, steps: int = 2, seed: int = 0, image=None, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    image = dummy_image() if image is None else image
    return pipe(
        "make it blue", image, num_inference_steps=steps, generator=generator, output_type="np", **kwargs
    ).images


@pytest.fixture(scope="module")
def pipe() -> RewardEditPipeline:
    return make_dummy_pipeline()


@pytest.fixture(scope="module")
def reference(pipe) -> np.ndarray:
    return edit(pipe)


def test_reward_condition_and_failure_texts_are_computed_once_per_call(pipe):
    conditioner_calls, unet_calls, text_encoder_rows = [], [], []
    handles = [
        pipe.unet.reward_conditioner.register_forward_hook(lambda m, args, out: conditioner_calls.append(args[0])),
        pipe.unet.register_forward_hook(lambda m, args, kwargs, out: unet_calls.append(kwargs), with_kwargs=True),
        pipe.text_encoder.register_forward_hook(lambda m, args, out: text_encoder_rows.append(args[0].shape[0])),
    ]
    try:
        generator = torch.Generator().manual_seed(0)
        pipe(
            ["make it blue", "add a hat"],
            [dummy_image(1), dummy_image(2)],
            failure_text=["blurry", "blurry"],
            num_images_per_prompt=2,
            num_inference_steps=3,
            generator=generator,
            output_type="np",
        )
    finally:
        for handle in handles:
            handle.remove()
    assert len(unet_calls) == 3  # one UNet call per step ...
    assert len(conditioner_calls) == 1  # ... but one reward embedding per call
    assert conditioner_calls[0].shape == (3 * 2 * 2, 3)  # 3 guidance branches × 2 prompts × 2 images per prompt
    assert all(call["reward_condition"] is unet_calls[0]["reward_condition"] for call in unet_calls)
    assert all("reward_scores" not in call and "failure_text_embeds" not in call for call in unet_calls)
    assert text_encoder_rows.count(1) == 1  # the repeated failure text was encoded once (prompts are 2-row calls)


def test_lora_covering_the_reward_modules_saves_loads_scales_and_fuses(tmp_path, reference):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    trained = make_dummy_pipeline()
    targets = ["to_q", "to_k", "to_v", "ff_in", "linear_1", "failure_text_time_proj", "failure_text_token_proj"]
    targets += [f"latent_reward_attention.{name}" for name in ("to_out", "proj_in", "proj_out")]
    torch.manual_seed(0)
    trained.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets))
    with_lora = edit(trained)
    assert np.abs(with_lora - reference).max() > 1e-3
    lora_state = get_peft_model_state_dict(trained.unet)
    assert any(key.startswith("reward_conditioner.reward_time_embedding.linear_1.") for key in lora_state)
    assert any(key.startswith("latent_reward_attention.to_q.") for key in lora_state)
    RewardEditPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora_state)
    assert [path.name for path in tmp_path.iterdir()] == ["pytorch_lora_weights.safetensors"]

    loaded = make_dummy_pipeline()
    loaded.load_lora_weights(tmp_path)
    assert np.allclose(edit(loaded), with_lora, atol=1e-5)
    half = edit(loaded, cross_attention_kwargs={"scale": 0.5})
    assert np.abs(half - with_lora).max() > 1e-4 and np.abs(half - reference).max() > 1e-4
    assert np.allclose(edit(loaded), with_lora, atol=1e-5)  # the scale applied to that call only
    loaded.fuse_lora()
    assert np.allclose(edit(loaded), with_lora, atol=1e-4)  # (also proves the LoRA on to_q/proj_out is applied)
    loaded.unfuse_lora()
    loaded.unload_lora_weights()
    assert np.allclose(edit(loaded), reference, atol=1e-5)


@pytest.mark.parametrize("processor", [AttnProcessor2_0, AttnProcessor])
def test_attention_processors_give_the_same_edit(processor, reference):
    other = make_dummy_pipeline()
    other.unet.set_attn_processor(processor())
    assert np.allclose(edit(other), reference, atol=1e-5)


def test_model_cpu_offload_gives_the_same_edit(reference):
    offloaded = make_dummy_pipeline()
    offloaded.enable_model_cpu_offload(device=DEVICE)
    assert np.allclose(edit(offloaded), reference, atol=1e-4)
    assert np.allclose(edit(offloaded), reference, atol=1e-4)  # the second call too (models moved back and forth)


def test_sequential_cpu_offload_works_wherever_accelerate_runs_it_for_the_stock_pipeline(reference):
    stock = StableDiffusionInstructPix2PixPipeline(
        **get_dummy_components(plain_unet=True), requires_safety_checker=False
    )
    stock.set_progress_bar_config(disable=True)
    stock.enable_sequential_cpu_offload(device=DEVICE)
    try:
        edit(stock)
    except TypeError as error:  # accelerate cannot move parameters to "meta" and back with a CPU execution device
        pytest.skip(f"accelerate's sequential offload fails for the stock pipeline on {DEVICE} too: {error}")
    offloaded = make_dummy_pipeline()
    offloaded.enable_sequential_cpu_offload(device=DEVICE)
    assert np.allclose(edit(offloaded), reference, atol=1e-4)


def test_vae_slicing_and_tiling_keep_the_edit():
    pipe = make_dummy_pipeline()
    images = [dummy_image(3, 64), dummy_image(4, 64)]
    generator = torch.Generator().manual_seed(0)
    arguments = {"num_inference_steps": 2, "output_type": "np"}
    reference = pipe(["a", "b"], images, generator=generator, **arguments).images
    pipe.vae.enable_slicing()
    sliced = pipe(["a", "b"], images, generator=torch.Generator().manual_seed(0), **arguments).images
    assert np.allclose(sliced, reference, atol=1e-5)
    pipe.vae.disable_slicing()
    pipe.vae.enable_tiling()  # the tiny VAE tiles anything larger than 32 px (latents larger than 16)
    tiled = pipe(["a", "b"], images, generator=torch.Generator().manual_seed(0), **arguments).images
    assert tiled.shape == reference.shape and np.isfinite(tiled).all()
    assert np.abs(tiled - reference).max() > 0  # tiles were blended ...
    assert np.abs(tiled - reference).mean() < 0.05  # ... into nearly the same image


def test_step_callback_that_edits_latents_changes_the_following_steps(pipe, reference):
    seen = []

    def keep(pipeline, step, timestep, callback_kwargs):
        seen.append(step)
        return {"latents": callback_kwargs["latents"]}

    def zero_after_first_step(pipeline, step, timestep, callback_kwargs):
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if step == 0 else {}

    assert np.array_equal(edit(pipe, callback_on_step_end=keep), reference) and seen == [0, 1]
    edited = edit(pipe, callback_on_step_end=zero_after_first_step)
    assert np.abs(edited - reference).max() > 1e-3

    final = []

    def shift_last(pipeline, step, timestep, callback_kwargs):
        if step == 1:
            final.append(callback_kwargs["latents"].clone())
            return {"latents": callback_kwargs["latents"] + 1.0}
        return {}

    generator = torch.Generator().manual_seed(0)
    latents = pipe(
        "make it blue",
        dummy_image(),
        num_inference_steps=2,
        generator=generator,
        output_type="latent",
        callback_on_step_end=shift_last,
    ).images
    assert torch.equal(latents, final[0] + 1.0)


@pytest.mark.parametrize(("dtype", "max_tolerance"), [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_reduced_precision_end_to_end_on_this_device_is_finite_and_close_to_float32(dtype, max_tolerance, reference):
    low = make_dummy_pipeline().to(DEVICE)
    low.to(dtype)
    with torch.no_grad():
        condition = low.unet.compute_reward_condition(
            torch.full((1, 3), 5.0), torch.zeros(1, low.unet.config.failure_text_embed_dim)
        )
    assert condition.global_embedding.dtype == dtype and condition.tokens.dtype == dtype
    images = edit(low)
    assert np.isfinite(images).all()
    assert np.abs(images - reference).max() < max_tolerance
    assert np.abs(images - reference).mean() < max_tolerance / 5


@pytest.mark.slow
def test_compiled_unet_in_the_pipeline_matches_eager(reference):
    compiled = make_dummy_pipeline()
    torch._dynamo.reset()
    compiled.unet = torch.compile(compiled.unet, fullgraph=True)
    assert np.allclose(edit(compiled), reference, atol=1e-4)
    assert np.allclose(
        edit(compiled, reward_scores=(1, 2, 3)), edit(make_dummy_pipeline(), reward_scores=(1, 2, 3)), atol=1e-4
    )
    torch._dynamo.reset()
