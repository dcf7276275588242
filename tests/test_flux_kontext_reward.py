"""FLUX.1 Kontext with reward conditions: exact zero-init wrap, rewards act, save/load both ways, bad input."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline, FluxKontextPipeline, FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from reward_edit_pipeline.models.transformer_flux_reward import FluxRewardAttnProcessor, RewardFluxTransformer2DModel
from reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline
from reward_edit_pipeline.pipelines.reward_dit_common import RewardCondition
from reward_edit_pipeline.testing_dit import (
    dummy_flux_kontext_call_kwargs,
    get_dummy_flux_transformer_config,
    make_dummy_flux_kontext_base_pipeline,
    make_dummy_flux_kontext_pipeline,
    save_dummy_flux_kontext_folder,
)

PROMPT = "make the hat red"


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """One intra-op thread: tiny models on a shared CPU run far faster without spinning OpenMP threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> PIL.Image.Image:
    pixels = np.random.RandomState(0).randint(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="module")
def reward_pipe() -> RewardFluxKontextPipeline:
    return make_dummy_flux_kontext_pipeline(seed=0, reward_init="default")


def edit(pipe, image, seed: int = 0, **kwargs) -> np.ndarray:
    call = dummy_flux_kontext_call_kwargs()
    call.update(kwargs)
    return pipe(image=image, prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **call).images


def transformer_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    config = get_dummy_flux_transformer_config()
    image_tokens, text_tokens = 32, 7
    return {
        "hidden_states": torch.randn(batch, image_tokens, config["in_channels"], generator=generator),
        "encoder_hidden_states": torch.randn(batch, text_tokens, config["joint_attention_dim"], generator=generator),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=generator),
        "timestep": torch.rand(batch, generator=generator),
        "guidance": torch.full((batch,), 2.5),
        "img_ids": torch.randint(0, 8, (image_tokens, 3), generator=generator).float(),
        "txt_ids": torch.zeros(text_tokens, 3),
    }


def test_zero_init_transformer_equals_base_bit_for_bit():
    torch.manual_seed(0)
    base = FluxTransformer2DModel(**get_dummy_flux_transformer_config()).eval()
    wrapped = RewardFluxTransformer2DModel.from_transformer(base, reward_init="zero", reward_token_dim=24).eval()
    inputs = transformer_inputs()
    scores = torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.5, 0.0]])
    text_embeds = torch.randn(2, wrapped.config.failure_text_embed_dim)
    with torch.no_grad():
        expected = base(**inputs, return_dict=False)[0]
        got = wrapped(**inputs, reward_scores=scores, failure_text_embeds=text_embeds, return_dict=False)[0]
    assert torch.equal(got, expected), (got - expected).abs().max()
    # base checkpoint keys are unchanged: a plain Flux transformer loads the wrapped model's base state dict
    assert set(wrapped.base_state_dict()) == set(base.state_dict())
    assert all(
        name.startswith(("reward_conditioner.", "reward_attention."))
        for name in set(wrapped.state_dict()) - set(base.state_dict())
    )
    FluxTransformer2DModel(**get_dummy_flux_transformer_config()).load_state_dict(wrapped.base_state_dict())


def test_zero_init_pipeline_wrap_equals_stock_pipeline(image):
    expected = edit(make_dummy_flux_kontext_base_pipeline(seed=0), image)
    wrapped = RewardFluxKontextPipeline.from_base(make_dummy_flux_kontext_base_pipeline(seed=0), reward_init="zero")
    wrapped.set_progress_bar_config(disable=True)
    got = edit(wrapped, image, failure_text=("the hat is blue", None, None), reward_scores=(2, 3, 4))
    assert np.array_equal(got, expected)


def test_rewards_change_the_output(reward_pipe, image):
    best = edit(reward_pipe, image)
    assert np.array_equal(best, edit(reward_pipe, image)), "same seed, same rewards must repeat exactly"
    assert np.array_equal(best, edit(reward_pipe, image, reward_scores=(5, 5, 5), failure_text=None))
    # the package's rules: "" / blank / all-None per-perspective texts mean "no failure text"; scores may be text
    assert np.array_equal(best, edit(reward_pipe, image, reward_scores="5,5,5", failure_text="  "))
    assert np.array_equal(best, edit(reward_pipe, image, failure_text=(None, "", None)))
    lower = edit(reward_pipe, image, reward_scores=(5, 1, 5))
    with_failure = edit(reward_pipe, image, failure_text=("the hat is still blue", None, None))
    null = edit(reward_pipe, image, reward_scores=None)
    guided = edit(reward_pipe, image, reward_guidance_scale=3.0)
    for name, other in [("scores", lower), ("failure text", with_failure), ("null", null), ("guidance", guided)]:
        assert np.abs(best - other).max() > 1e-3, name


def test_per_prompt_rewards_match_single_prompt_calls(reward_pipe, image):
    call = dummy_flux_kontext_call_kwargs()
    batched = reward_pipe(
        image=[image, image],
        prompt=[PROMPT, PROMPT],
        reward_scores=[(5, 5, 5), (0, 1, 2)],
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        **call,
    ).images
    second = reward_pipe(
        image=image, prompt=PROMPT, reward_scores=(0, 1, 2), generator=torch.Generator().manual_seed(1), **call
    ).images
    np.testing.assert_allclose(batched[1], second[0], atol=1e-4)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_num_images_per_prompt_gives_every_image_its_prompts_rewards(reward_pipe, image):
    call = dummy_flux_kontext_call_kwargs()
    images = reward_pipe(
        image=[image, image],
        prompt=[PROMPT, PROMPT],
        reward_scores=[(5, 5, 5), (0, 1, 2)],
        num_images_per_prompt=2,
        latents=torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(0)).expand(4, 64, 16),  # one noise
        **call,
    ).images
    assert images.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    np.testing.assert_allclose(images[2], images[3], atol=1e-5)
    assert np.abs(images[0] - images[2]).max() > 1e-3


def test_reward_guidance_combination_matches_two_forward_passes(reward_pipe):
    transformer = reward_pipe.transformer
    inputs = transformer_inputs(batch=1)
    scores = torch.tensor([[4.0, 3.0, 5.0]])
    text_embeds = torch.randn(1, transformer.config.failure_text_embed_dim)
    with torch.no_grad():
        conditioned = transformer(**inputs, reward_scores=scores, failure_text_embeds=text_embeds, return_dict=False)[0]
        null = transformer(
            **inputs,
            reward_scores=scores,
            failure_text_embeds=text_embeds,
            null_reward_mask=torch.tensor([True]),
            return_dict=False,
        )[0]
        condition = RewardCondition(
            transformer.reward_conditioner(scores, text_embeds),
            transformer.reward_conditioner(scores, text_embeds, torch.tensor([True])),
            guidance_scale=2.5,
        )
        guided = transformer(**inputs, joint_attention_kwargs={"reward_condition": condition}, return_dict=False)[0]
    torch.testing.assert_close(guided, conditioned + 1.5 * (conditioned - null), atol=1e-5, rtol=1e-5)


def test_failure_text_is_encoded_once_per_distinct_text(reward_pipe, image, monkeypatch):
    seen: list[list[str]] = []
    original = reward_pipe._get_clip_prompt_embeds

    def spy(prompt, num_images_per_prompt=1, device=None):
        seen.append(list(prompt) if isinstance(prompt, list) else [prompt])
        return original(prompt, num_images_per_prompt=num_images_per_prompt, device=device)

    monkeypatch.setattr(reward_pipe, "_get_clip_prompt_embeds", spy)
    reward_pipe.prepare_reward_condition(None, None, 1.0, batch_size=1, num_images_per_prompt=1)
    condition = reward_pipe.prepare_reward_condition(
        (5, 5, 5), ["the sky", "the sky", None], 1.0, batch_size=3, num_images_per_prompt=2
    )
    assert seen[-1] == ["the sky", "None; None; None"]
    assert condition.embeddings.tokens.shape[0] == 6
    assert torch.equal(condition.embeddings.tokens[0], condition.embeddings.tokens[3])


def test_save_load_round_trips_both_ways(reward_pipe, image, tmp_path):
    expected = edit(reward_pipe, image, reward_scores=(4, 2, 5))
    reward_pipe.save_pretrained(tmp_path / "saved")
    model_index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_reward_flux_kontext", "RewardFluxKontextPipeline"]
    assert model_index["transformer"] == ["reward_edit_pipeline", "RewardFluxTransformer2DModel"]
    assert not list((tmp_path / "saved").rglob("*.bin")), "safetensors only"

    loaded = RewardFluxKontextPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer) is RewardFluxTransformer2DModel
    assert np.array_equal(edit(loaded, image, reward_scores=(4, 2, 5)), expected)

    generic = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    generic.set_progress_bar_config(disable=True)
    assert type(generic).__name__ == "RewardFluxKontextPipeline"
    assert isinstance(generic.transformer, RewardFluxTransformer2DModel)
    assert np.array_equal(edit(generic, image, reward_scores=(4, 2, 5)), expected)


def test_stock_folder_is_refused_and_wrapped_by_from_flux_kontext(image, tmp_path):
    folder = save_dummy_flux_kontext_folder(tmp_path / "stock", seed=0)
    with pytest.raises(ValueError, match="from_flux_kontext"):
        RewardFluxKontextPipeline.from_pretrained(folder)
    stock = FluxKontextPipeline.from_pretrained(folder)
    stock.set_progress_bar_config(disable=True)
    expected = edit(stock, image)
    wrapped = RewardFluxKontextPipeline.from_flux_kontext(folder)
    wrapped.set_progress_bar_config(disable=True)
    assert np.array_equal(edit(wrapped, image), expected)
    with pytest.raises(ValueError, match="already has reward modules"):
        RewardFluxKontextPipeline.from_base(RewardFluxKontextPipeline.from_base(stock))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward_scores": (5, 6, 5)}, r"preserving score must be a finite number in \[0, 5\]"),
        ({"reward_scores": (5, 5)}, "exactly 3 values"),
        ({"reward_scores": [(5, 5, 5), (5, 5, 5)]}, "2 triples but the batch has 1"),
        (
            {"reward_scores": torch.tensor([5.0, float("nan"), 5.0])},
            r"preserving score must be a finite number in \[0, 5\]",
        ),
        ({"reward_scores": "5,5"}, "exactly 3 values"),
        ({"reward_guidance_scale": 0.5}, r"`reward_guidance_scale` must be a finite number >= 1"),
        ({"reward_scores": None, "failure_text": "x"}, "null reward condition"),
        ({"failure_text": ("a", "b")}, "3 entries"),
        ({"failure_text": ["a", "b"]}, "one entry per prompt"),
        ({"num_images_per_prompt": 0}, "`num_images_per_prompt` must be a positive integer"),
        ({"joint_attention_kwargs": {"reward_condition": None}}, "not joint_attention_kwargs"),
    ],
)
def test_bad_reward_inputs_are_refused_with_clear_errors(reward_pipe, image, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        edit(reward_pipe, image, **kwargs)


def test_transformer_refuses_missing_condition_and_replaced_processors(reward_pipe):
    transformer = reward_pipe.transformer
    inputs = transformer_inputs(batch=1)
    with pytest.raises(ValueError, match="needs a reward condition"):
        transformer(**inputs)
    scores = torch.tensor([[5.0, 5.0, 5.0]])
    text_embeds = torch.zeros(1, transformer.config.failure_text_embed_dim)
    with pytest.raises(ValueError, match="exactly|shape"):
        transformer(**inputs, reward_scores=torch.ones(1, 2), failure_text_embeds=text_embeds)
    three_rows = RewardCondition(transformer.reward_conditioner(scores.expand(3, 3), text_embeds.expand(3, -1)))
    with pytest.raises(ValueError, match="has 3 rows for a batch of 1"):
        transformer(**inputs, joint_attention_kwargs={"reward_condition": three_rows})
    processors = transformer.attn_processors
    try:
        transformer.transformer_blocks[0].attn.set_processor(FluxAttnProcessor())
        with pytest.raises(ValueError, match="FluxRewardAttnProcessor"):
            transformer(**inputs, reward_scores=scores, failure_text_embeds=text_embeds)
    finally:
        transformer.set_attn_processor(processors)
    assert isinstance(transformer.transformer_blocks[0].attn.processor, FluxRewardAttnProcessor)


def test_load_pipeline_and_edit_cli_accept_flux_folders(reward_pipe, image, tmp_path, caplog):
    from reward_edit_pipeline.cli import main as cli_main
    from reward_edit_pipeline.loading import detect_layout, load_pipeline
    from reward_edit_pipeline.pipelines.reward_dit_common import run_edit

    reward_pipe.save_pretrained(tmp_path / "reward")
    stock_folder = save_dummy_flux_kontext_folder(tmp_path / "stock", seed=0)
    assert detect_layout(tmp_path / "reward") == "reward-dit"
    assert detect_layout(stock_folder) == "stock-dit"
    loaded = load_pipeline(tmp_path / "reward", device="cpu")
    assert type(loaded) is RewardFluxKontextPipeline
    with caplog.at_level("WARNING"):
        wrapped = load_pipeline(stock_folder, device="cpu")
    assert isinstance(wrapped.transformer, RewardFluxTransformer2DModel) and "zero-initialised" in caplog.text

    loaded.set_progress_bar_config(disable=True)
    odd = image.resize((40, 36))  # not a multiple of 16: edited at 32x32, returned at the input size
    edited = run_edit(loaded, PROMPT, odd, num_inference_steps=2, image_guidance_scale=1.5).images[0]
    assert edited.size == (40, 36)

    image.save(tmp_path / "in.png")
    argv = [
        "edit",
        str(tmp_path / "in.png"),
        PROMPT,
        "-o",
        str(tmp_path / "out.png"),
        "--model",
        str(tmp_path / "reward"),
    ]
    assert cli_main([*argv, "--steps", "2", "--guidance", "2.5", "--scores", "5,3,5", "--device", "cpu"]) == 0
    assert PIL.Image.open(tmp_path / "out.png").size == (32, 32)
