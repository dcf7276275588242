"""RewardEditPipeline: equivalence with the stock InstructPix2Pix pipeline, loading paths, batching, guidance, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image

from reward_edit_pipeline import RewardEditPipeline, RewardUNet2DConditionModel
from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT
from reward_edit_pipeline.testing import (
    make_dummy_pipeline,
    save_dummy_instruct_pix2pix_folder,
    save_dummy_official_folder,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def dummy_image(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def edit(pipe, prompt="make it blue", image=None, steps=2, seed=0, **kwargs):
    image = dummy_image() if image is None else image
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, image, num_inference_steps=steps, generator=generator, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def pipe(tiny_pipeline) -> RewardEditPipeline:
    return tiny_pipeline  # seed 0 (tests/conftest.py)


@pytest.fixture(scope="module")
def ip2p_folder(tmp_path_factory) -> Path:
    return save_dummy_instruct_pix2pix_folder(tmp_path_factory.mktemp("ip2p"))


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, pipe) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    pipe.save_pretrained(folder)
    return folder


def test_zero_init_pipeline_equals_the_stock_instruct_pix2pix_pipeline(ip2p_folder):
    stock = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p_folder, safety_checker=None)
    ours = RewardEditPipeline.from_instruct_pix2pix(ip2p_folder)
    for candidate in (stock, ours):
        candidate.set_progress_bar_config(disable=True)
    expected = edit(stock, steps=3)
    assert isinstance(ours.unet, RewardUNet2DConditionModel)
    assert np.array_equal(edit(ours, steps=3), expected)
    assert np.array_equal(edit(ours, steps=3, reward_scores=(1, 2, 3), failure_text="blurry"), expected)


def test_saved_folder_is_safetensors_only_and_loads_with_both_loaders(saved_folder, pipe):
    files = [path.name for path in saved_folder.rglob("*") if path.is_file()]
    assert not [name for name in files if name.endswith((".bin", ".pkl", ".pt", ".ckpt"))]
    assert any(name.endswith(".safetensors") for name in files)
    model_index = json.loads((saved_folder / "model_index.json").read_text())
    assert model_index["unet"] == ["reward_edit_pipeline", "RewardUNet2DConditionModel"]
    expected = edit(pipe)
    ours = RewardEditPipeline.from_pretrained(saved_folder)
    generic = DiffusionPipeline.from_pretrained(saved_folder, trust_remote_code=True)
    for loaded in (ours, generic):
        assert isinstance(loaded, RewardEditPipeline) and type(loaded) is RewardEditPipeline
        loaded.set_progress_bar_config(disable=True)
        assert np.array_equal(edit(loaded), expected)


def test_generic_loader_without_trust_remote_code_is_refused(saved_folder):
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved_folder)


def test_from_pretrained_refuses_a_plain_instruct_pix2pix_folder_with_a_pointer(ip2p_folder):
    with pytest.raises(ValueError, match="from_instruct_pix2pix"):
        RewardEditPipeline.from_pretrained(ip2p_folder)


def test_from_official_loads_the_release_layout(tmp_path):
    folder = save_dummy_official_folder(tmp_path / "official", seed=3)
    reference = make_dummy_pipeline(seed=3)
    official = RewardEditPipeline.from_official(folder)
    official.set_progress_bar_config(disable=True)
    expected_state = reference.unet.state_dict()
    assert all(torch.equal(value, expected_state[key]) for key, value in official.unet.state_dict().items())
    assert official.unet.config.no_failure_text == DEFAULT_NO_FAILURE_TEXT
    assert np.array_equal(edit(official), edit(reference))


def test_default_failure_text_is_the_models_no_failure_convention(pipe):
    assert np.array_equal(edit(pipe), edit(pipe, failure_text=DEFAULT_NO_FAILURE_TEXT))
    assert np.array_equal(
        edit(pipe, failure_text=("sky unchanged", None, "")), edit(pipe, failure_text="sky unchanged; None; None")
    )
    assert not np.array_equal(edit(pipe), edit(pipe, failure_text="the sky is still grey"))


def test_reward_scores_change_the_edit(pipe):
    assert np.abs(edit(pipe) - edit(pipe, reward_scores=(0, 0, 0))).max() > 1e-4


@pytest.fixture(scope="module")
def deterministic_pipe(pipe) -> RewardEditPipeline:
    """The same components with a scheduler that draws no noise while sampling (Euler, not Euler ancestral), so a batch
    and its rows run one at a time must agree over every step, not only the first."""
    deterministic = RewardEditPipeline(
        **{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config)}
    )
    deterministic.set_progress_bar_config(disable=True)
    return deterministic


def test_batch_with_per_prompt_rewards_matches_single_calls(deterministic_pipe):
    prompts = ["make it blue", "add a hat"]
    images = [dummy_image(1), dummy_image(2)]
    scores = [(5, 5, 5), (1, 2, 3)]
    texts = [None, ("wrong colour", None, None)]
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    options = {"num_inference_steps": 3, "output_type": "np", "guidance_scale": 7.5, "reward_guidance_scale": 2.0}
    batched = deterministic_pipe(
        prompts, images, reward_scores=scores, failure_text=texts, latents=latents, **options
    ).images
    singles = [
        deterministic_pipe(
            prompts[index],
            images[index],
            reward_scores=scores[index],
            failure_text=texts[index],
            latents=latents[index : index + 1],
            **options,
        ).images[0]
        for index in range(2)
    ]
    np.testing.assert_allclose(batched, np.stack(singles), atol=1e-4)
    assert np.abs(singles[0] - singles[1]).max() > 0.05  # the rows really differ: the test could tell them apart


def test_num_images_per_prompt_edits_each_starting_latent_like_a_single_call(deterministic_pipe):
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    options = {"num_inference_steps": 2, "output_type": "np", "reward_scores": (4, 5, 3)}
    pair = deterministic_pipe("make it blue", dummy_image(), num_images_per_prompt=2, latents=latents, **options).images
    assert pair.shape == (2, 32, 32, 3)
    for index in range(2):
        single = deterministic_pipe("make it blue", dummy_image(), latents=latents[index : index + 1], **options).images
        np.testing.assert_allclose(pair[index], single[0], atol=1e-4)


def test_output_types_hold_the_same_edit(pipe):
    reference = edit(pipe)
    generator = torch.Generator().manual_seed(0)
    as_pt = pipe("make it blue", dummy_image(), num_inference_steps=2, generator=generator, output_type="pt").images
    assert np.allclose(as_pt[0].permute(1, 2, 0).numpy(), reference[0], atol=1e-6)
    generator = torch.Generator().manual_seed(0)
    as_pil = pipe("make it blue", dummy_image(), num_inference_steps=2, generator=generator).images[0]
    assert as_pil.size == (32, 32)
    assert np.abs(np.asarray(as_pil, dtype=np.float64) - reference[0] * 255).max() <= 0.5 + 1e-6  # rounded to uint8
    generator = torch.Generator().manual_seed(0)
    as_tuple = pipe(
        "make it blue", dummy_image(), num_inference_steps=2, generator=generator, output_type="np", return_dict=False
    )
    assert np.array_equal(as_tuple[0], reference)


def test_step_callback_sees_the_guidance_batch_and_can_interrupt(pipe):
    seen = []

    def callback(current, step, timestep, tensors):
        seen.append(
            (step, tensors["latents"].shape[0], tensors["prompt_embeds"].shape[0], tensors["image_latents"].shape[0])
        )
        if step == 1:
            current._interrupt = True
        return tensors

    edit(
        pipe,
        steps=5,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "image_latents"],
    )
    assert seen == [(0, 1, 3, 3), (1, 1, 3, 3)]


def test_reward_guidance_adds_a_null_reward_branch_and_changes_the_edit(pipe):
    batches = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        plain = edit(pipe, steps=1)
        guided = edit(pipe, steps=1, reward_guidance_scale=3.0)
    finally:
        handle.remove()
    assert batches == [3, 4]
    assert np.abs(plain - guided).max() > 1e-4


def test_odd_image_sizes_are_padded_and_cropped_back_to_the_input_size(pipe):
    image = dummy_image(size=(33, 35))
    result = edit(pipe, image=image)
    assert result.shape == (1, 35, 33, 3)  # the output has the input's exact size
    # independent computation: pad by hand (edge pixels repeated) to a multiple of the VAE factor, edit, crop
    padded = Image.fromarray(np.pad(np.asarray(image), ((0, 1), (0, 1), (0, 0)), mode="edge"))
    np.testing.assert_allclose(result, edit(pipe, image=padded)[:, :35, :33], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"reward_scores": (5, 6, 5)}, ValueError, r"preserving score must be a finite number in \[0, 5\]"),
        ({"reward_scores": (5, float("nan"), 5)}, ValueError, "finite number"),
        ({"reward_scores": (5, 5)}, ValueError, "exactly 3 values"),
        ({"reward_scores": torch.tensor([[5.0, 5.0, -1.0]])}, ValueError, r"in \[0, 5\]"),
        ({"reward_scores": torch.ones(2, 3)}, ValueError, "must have shape"),
        ({"reward_scores": [(5, 5, 5), (5, 5, 5)]}, ValueError, "2 triples but the batch has 1"),
        ({"failure_text": ["a", "b"]}, ValueError, "one entry per prompt"),
        ({"failure_text": 3}, TypeError, "`failure_text` must be None"),
        ({"prompt": ""}, ValueError, "must not be empty"),
        ({"image": "photo.png"}, TypeError, "`image` must be a PIL image"),
        ({"image": [dummy_image(), dummy_image()]}, ValueError, "2 images for 1 prompts"),
        ({"num_inference_steps": 0}, ValueError, "`num_inference_steps` must be a positive integer"),
        ({"reward_guidance_scale": 0.5}, ValueError, "`reward_guidance_scale` must be a finite number >= 1"),
        ({"guidance_scale": float("inf")}, ValueError, "`guidance_scale`"),
        ({"output_type": "jpeg"}, ValueError, "`output_type`"),
    ],
)
def test_bad_inputs_raise_clear_errors(pipe, kwargs, error, message):
    arguments = {"prompt": "make it blue", "image": dummy_image(), "num_inference_steps": 1, **kwargs}
    with pytest.raises(error, match=message):
        pipe(**arguments)


def test_encode_failure_text_matches_the_pooled_text_encoder_output(pipe):
    texts = ["None; None; None", "blurry", "None; None; None"]
    embeds = pipe.encode_failure_text(texts, torch.device("cpu"))
    ids = pipe.tokenizer(
        ["blurry"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        pooled = pipe.text_encoder(ids)[1]
    assert embeds.shape == (3, pipe.unet.config.failure_text_embed_dim)
    assert torch.allclose(embeds[1], pooled[0]) and torch.equal(embeds[0], embeds[2])


def test_save_pretrained_refuses_pickle(pipe, tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        pipe.save_pretrained(tmp_path, safe_serialization=False)


def test_dtype_moves_and_attention_slicing_keep_the_pipeline_working(tmp_path):
    pipe = make_dummy_pipeline()
    reference = edit(pipe)
    pipe.enable_attention_slicing(1)
    assert np.allclose(edit(pipe), reference, atol=1e-5)
    pipe.disable_attention_slicing()
    pipe.to(torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.unet.latent_reward_attention.to_q.weight.dtype == torch.bfloat16
    low_precision = edit(pipe)
    assert low_precision.shape == reference.shape and np.isfinite(low_precision).all()
    assert np.abs(low_precision - reference).mean() < 0.1


def test_latents_input_reproduces_the_seeded_run(pipe):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    first = pipe(
        "make it blue",
        dummy_image(),
        latents=latents,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(1),
    ).images
    second = pipe(
        "make it blue",
        dummy_image(),
        latents=latents.clone(),
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(1),
    ).images
    assert np.array_equal(first, second)


def test_null_reward_condition_matches_the_unets_null_rows(pipe):
    batches = []  # the null_reward_mask argument of the reward conditioner (run once per call)
    handle = pipe.unet.reward_conditioner.register_forward_hook(lambda module, args, output: batches.append(args[2]))
    try:
        null = edit(pipe, reward_scores=None, steps=2)
    finally:
        handle.remove()
    assert len(batches) == 1 and batches[0] is not None and bool(batches[0].all()) and batches[0].shape == (3,)
    assert np.abs(null - edit(pipe, steps=2)).max() > 1e-4
    with pytest.raises(ValueError, match="null reward condition"):
        edit(pipe, reward_scores=None, failure_text="blurry")
