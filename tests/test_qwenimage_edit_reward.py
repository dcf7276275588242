"""Qwen-Image-Edit (and -2509/-2511 "Plus") with reward conditions: exact zero-init wrap, rewards act, save/load
both ways, reference-image areas, bad input. Tiny random-weight components, 32×32, 2 steps."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline, QwenImageEditPipeline, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

from reward_edit_pipeline.models.reward_dit_condition import RewardCondition
from reward_edit_pipeline.models.transformer_qwenimage_reward import (
    QwenRewardDoubleStreamAttnProcessor,
    RewardQwenImageTransformer2DModel,
)
from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import (
    RewardQwenImageEditPipeline,
    RewardQwenImageEditPlusPipeline,
)
from reward_edit_pipeline.testing_qwenimage import (
    QWEN_TEXT_WIDTH,
    TINY_REFERENCE_AREA,
    dummy_qwen_edit_call_kwargs,
    get_dummy_qwen_base_components,
    get_dummy_qwenimage_transformer,
    get_dummy_qwenimage_transformer_config,
    make_dummy_qwen_edit_pipeline,
    randomize_reward_modules,
    save_dummy_qwen_edit_folder,
)

PROMPT = "make the hat red"


@pytest.fixture(scope="module")
def image() -> PIL.Image.Image:
    pixels = np.random.RandomState(0).randint(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="module")
def reward_pipe() -> RewardQwenImageEditPipeline:
    return make_dummy_qwen_edit_pipeline(plus=False, seed=0, randomize_rewards=True)


@pytest.fixture(scope="module")
def reward_plus_pipe() -> RewardQwenImageEditPlusPipeline:
    return make_dummy_qwen_edit_pipeline(plus=True, seed=0, randomize_rewards=True)


def edit(pipe, image, seed: int = 0, **kwargs) -> np.ndarray:
    call = dummy_qwen_edit_call_kwargs()
    call.update(kwargs)
    return pipe(image=image, prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **call).images


def transformer_inputs(batch: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = get_dummy_qwenimage_transformer_config()
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[-1, 5:] = 0  # padded prompt in the last row
    return {
        "hidden_states": torch.randn(batch, 16 + 16, config["in_channels"], generator=generator),
        "encoder_hidden_states": torch.randn(batch, 7, QWEN_TEXT_WIDTH, generator=generator),
        "encoder_hidden_states_mask": mask,
        "timestep": torch.rand(batch, generator=generator),
        "img_shapes": [[(1, 4, 4), (1, 4, 4)]] * batch,  # target 4×4 tokens, one 4×4 reference
    }


@pytest.mark.parametrize("zero_cond_t", [False, True], ids=["edit", "edit-2511-zero_cond_t"])
def test_zero_init_transformer_equals_base_bit_for_bit(zero_cond_t):
    base = get_dummy_qwenimage_transformer(seed=0, zero_cond_t=zero_cond_t)
    wrapped = RewardQwenImageTransformer2DModel.from_transformer(base, reward_token_dim=24)
    inputs = transformer_inputs()
    scores = torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.5, 0.0]])
    text_embeds = torch.randn(2, wrapped.config.failure_text_embed_dim)
    with torch.no_grad():
        expected = base(**inputs, return_dict=False)[0]
        got = wrapped(**inputs, reward_scores=scores, failure_text_embeds=text_embeds, return_dict=False)[0]
    assert torch.equal(got, expected), (got - expected).abs().max()
    # base checkpoint keys unchanged; a plain transformer loads the wrapped model's base weights
    assert set(wrapped.base_state_dict()) == set(base.state_dict())
    assert all(
        name.startswith(("reward_conditioner.", "reward_attention."))
        for name in set(wrapped.state_dict()) - set(base.state_dict())
    )
    QwenImageTransformer2DModel(**get_dummy_qwenimage_transformer_config(zero_cond_t)).load_state_dict(
        wrapped.base_state_dict()
    )
    # the wrap shares the base parameters instead of copying them
    assert wrapped.img_in.weight.data_ptr() == base.img_in.weight.data_ptr()


@pytest.mark.parametrize("zero_cond_t", [False, True], ids=["edit", "edit-2511-zero_cond_t"])
def test_global_path_and_token_path_each_change_the_prediction(zero_cond_t):
    base = get_dummy_qwenimage_transformer(seed=0, zero_cond_t=zero_cond_t)
    wrapped = RewardQwenImageTransformer2DModel.from_transformer(base, reward_token_dim=24)
    randomize_reward_modules(wrapped, seed=1)
    inputs = transformer_inputs(batch=1)
    text_embeds = torch.randn(1, wrapped.config.failure_text_embed_dim)

    def predict(scores, global_only=False, tokens_only=False):
        embeddings = wrapped.reward_conditioner(torch.tensor([scores]), text_embeds)
        if global_only:
            embeddings.tokens = torch.zeros_like(embeddings.tokens)  # zero tokens: reward attention adds a constant
        if tokens_only:
            embeddings.global_embedding = torch.zeros_like(embeddings.global_embedding)
        condition = RewardCondition(embeddings)
        with torch.no_grad():
            return wrapped(**inputs, attention_kwargs={"reward_condition": condition}, return_dict=False)[0]

    for path in ({"global_only": True}, {"tokens_only": True}):
        assert (predict([5.0, 5.0, 5.0], **path) - predict([1.0, 0.0, 3.0], **path)).abs().max() > 1e-4, path


def test_reward_guidance_combination_matches_two_forward_passes(reward_pipe):
    transformer = reward_pipe.transformer
    inputs = transformer_inputs(batch=1)
    scores = torch.tensor([[4.0, 3.0, 5.0]])
    text_embeds = torch.randn(1, transformer.config.failure_text_embed_dim)
    null_mask = torch.tensor([True])
    with torch.no_grad():
        conditioned = transformer(**inputs, reward_scores=scores, failure_text_embeds=text_embeds, return_dict=False)[0]
        null = transformer(
            **inputs,
            reward_scores=scores,
            failure_text_embeds=text_embeds,
            null_reward_mask=null_mask,
            return_dict=False,
        )[0]
        condition = RewardCondition(
            transformer.reward_conditioner(scores, text_embeds),
            transformer.reward_conditioner(scores, text_embeds, null_mask),
            guidance_scale=2.5,
        )
        guided = transformer(**inputs, attention_kwargs={"reward_condition": condition}, return_dict=False)[0]
    torch.testing.assert_close(guided, conditioned + 1.5 * (conditioned - null), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("plus", [False, True], ids=["edit", "edit-plus-2511"])
def test_zero_init_pipeline_wrap_equals_stock_pipeline(image, plus, monkeypatch):
    """Same seed, same components: the zero-init wrap edits exactly like the stock diffusers pipeline, whatever the
    rewards. The stock pipelines hard-code ~1024² reference images (minutes on a CPU with the tiny VAE); for this
    comparison only, their module-level sizing is pointed at the same 32×32 area our pipelines use."""
    if plus:
        monkeypatch.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", TINY_REFERENCE_AREA)
        monkeypatch.setattr(pipeline_qwenimage_edit_plus, "CONDITION_IMAGE_SIZE", TINY_REFERENCE_AREA)
    else:
        stock_dimensions = pipeline_qwenimage_edit.calculate_dimensions
        monkeypatch.setattr(
            pipeline_qwenimage_edit,
            "calculate_dimensions",
            lambda area, ratio: stock_dimensions(TINY_REFERENCE_AREA, ratio),
        )
    stock_class = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    stock = stock_class(**get_dummy_qwen_base_components(seed=0, zero_cond_t=plus))
    stock.set_progress_bar_config(disable=True)
    expected = edit(stock, image)
    wrapped = make_dummy_qwen_edit_pipeline(plus=plus, seed=0, reward_init="zero")
    got = edit(wrapped, image, reward_scores=(2, 3, 4), failure_text=("the hat is blue", None, None))
    assert np.array_equal(got, expected), np.abs(got - expected).max()


def test_rewards_change_the_output(reward_pipe, image):
    pipe = reward_pipe
    best = edit(pipe, image)
    assert np.array_equal(best, edit(pipe, image, reward_scores=(5, 5, 5), failure_text=None))
    lower = edit(pipe, image, reward_scores=(5, 1, 5))
    with_failure = edit(pipe, image, failure_text=("the hat is still blue", None, None))
    null = edit(pipe, image, reward_scores=None)
    guided = edit(pipe, image, reward_guidance_scale=3.0)
    for name, other in [("scores", lower), ("failure text", with_failure), ("null", null), ("guidance", guided)]:
        assert np.abs(best - other).max() > 1e-3, name


def test_rewards_change_the_output_of_the_plus_pipeline_with_zero_cond_t(reward_plus_pipe, image):
    """-2511 layout: the reward vector enters both halves of the doubled timestep embedding."""
    best = edit(reward_plus_pipe, image)
    lower = edit(reward_plus_pipe, image, reward_scores=(5, 1, 5), failure_text="the hat is still blue")
    assert np.abs(best - lower).max() > 1e-3


def test_per_prompt_rewards_match_single_prompt_calls(reward_pipe, image):
    call = dummy_qwen_edit_call_kwargs()
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


def test_failure_text_is_pooled_and_encoded_once_per_distinct_text(reward_pipe, monkeypatch):
    seen: list[list[str]] = []
    original = reward_pipe._encode_unique_failure_texts

    def spy(texts, device):
        seen.append(list(texts))
        return original(texts, device)

    monkeypatch.setattr(reward_pipe, "_encode_unique_failure_texts", spy)
    condition = reward_pipe.prepare_reward_condition(
        (5, 5, 5), ["the sky", "the sky", None], 1.0, batch_size=3, num_images_per_prompt=2
    )
    assert seen == [["the sky", "None; None; None"]]
    assert condition.embeddings.tokens.shape[0] == 6
    assert torch.equal(condition.embeddings.tokens[0], condition.embeddings.tokens[3])
    # pooling: padding does not change a text's embedding (mean over its own tokens only)
    alone = reward_pipe.encode_failure_text(["the sky"])
    padded = reward_pipe.encode_failure_text(["the sky", "a much longer failure text with many more tokens"])
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)
    assert alone.shape == (1, reward_pipe.transformer.config.failure_text_embed_dim)


def test_reference_image_areas_are_attributes(image, monkeypatch):
    pipe = make_dummy_qwen_edit_pipeline(plus=True, seed=0)
    seen_shapes = []
    original_forward = pipe.transformer.forward

    def spy(*args, **kwargs):
        seen_shapes.append(kwargs["img_shapes"][0])
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    pipe.vae_image_area = 64 * 64
    wide = PIL.Image.new("RGB", (64, 32))
    out = edit(pipe, [image, wide], num_inference_steps=1, height=None, width=None)
    # output ~64² pixels at the last reference's 2:1 aspect (96×32, multiples of 32); each reference at ~64² pixels
    # for the VAE; token grids = pixels / (VAE factor 4 · 2×2 patches)
    assert out.shape[1:3] == (32, 96)
    assert seen_shapes[0] == [(1, 4, 12), (1, 8, 8), (1, 4, 12)]
    defaults = RewardQwenImageEditPlusPipeline(**get_dummy_qwen_base_components(seed=0, zero_cond_t=True))
    assert (defaults.vae_image_area, defaults.condition_image_area) == (1024 * 1024, 384 * 384)
    pipe.vae_image_area = 16
    with pytest.raises(ValueError, match="`vae_image_area` must be an int number of pixels >= 1024"):
        edit(pipe, image)
    with pytest.raises(ValueError, match="`condition_image_area` must be an int number of pixels"):
        RewardQwenImageEditPlusPipeline(**get_dummy_qwen_base_components(seed=0), condition_image_area=10.5)


def test_save_load_round_trips_both_ways(reward_plus_pipe, image, tmp_path):
    expected = edit(reward_plus_pipe, image, reward_scores=(4, 2, 5))
    reward_plus_pipe.save_pretrained(tmp_path / "saved")
    model_index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_reward_qwenimage_edit_plus", "RewardQwenImageEditPlusPipeline"]
    assert model_index["transformer"] == ["reward_edit_pipeline", "RewardQwenImageTransformer2DModel"]
    assert not list((tmp_path / "saved").rglob("*.bin")), "safetensors only"
    state = reward_plus_pipe.transformer.state_dict()

    loaded = RewardQwenImageEditPlusPipeline.from_pretrained(tmp_path / "saved")
    generic = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(generic).__name__ == "RewardQwenImageEditPlusPipeline"
    for pipe in (loaded, generic):
        assert type(pipe.transformer) is RewardQwenImageTransformer2DModel
        assert pipe.transformer.config.zero_cond_t
        assert all(torch.equal(tensor, state[name]) for name, tensor in pipe.transformer.state_dict().items())
        pipe.set_progress_bar_config(disable=True)
        assert (pipe.vae_image_area, pipe.condition_image_area) == (TINY_REFERENCE_AREA, TINY_REFERENCE_AREA)
        # Weights round-trip exactly (above); the edit agrees up to float noise, not bit for bit: with torchvision
        # installed transformers reloads the PIL image processor as its torchvision twin (a slightly different
        # resize of the vision-language prompt image), and the reloaded text encoder may pick another attention
        # implementation.
        np.testing.assert_allclose(edit(pipe, image, reward_scores=(4, 2, 5)), expected, atol=1e-4)


def test_stock_folder_is_refused_and_wrapped_by_from_qwen_image_edit(image, tmp_path):
    stock = QwenImageEditPipeline(**get_dummy_qwen_base_components(seed=0))
    stock.save_pretrained(tmp_path / "stock")
    with pytest.raises(ValueError, match="from_qwen_image_edit"):
        RewardQwenImageEditPipeline.from_pretrained(tmp_path / "stock")
    wrapped = RewardQwenImageEditPipeline.from_qwen_image_edit(tmp_path / "stock")
    assert isinstance(wrapped.transformer, RewardQwenImageTransformer2DModel)
    assert wrapped.transformer.config.failure_text_embed_dim == QWEN_TEXT_WIDTH
    with pytest.raises(ValueError, match="already has reward modules"):
        RewardQwenImageEditPipeline.from_base(wrapped)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward_scores": (5, 6, 5)}, r"preserving score must be a finite number in \[0, 5\]"),
        ({"reward_scores": (5, 5)}, "exactly 3 values"),
        ({"reward_scores": [(5, 5, 5), (5, 5, 5)]}, "2 triples but the batch has 1"),
        ({"reward_guidance_scale": 0.5}, r"`reward_guidance_scale` must be a finite number >= 1"),
        ({"reward_scores": None, "failure_text": "x"}, "null reward condition"),
        ({"failure_text": ("a", "b")}, "3 entries"),
        ({"num_images_per_prompt": 0}, "`num_images_per_prompt` must be a positive integer"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be a positive integer"),
        ({"output_type": "jpeg"}, "`output_type` must be one of"),
        ({"attention_kwargs": {"reward_condition": None}}, "not attention_kwargs"),
    ],
)
def test_bad_inputs_are_refused_with_clear_errors(reward_pipe, image, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        edit(reward_pipe, image, **kwargs)


def test_bad_images_and_prompts_are_refused(reward_pipe, reward_plus_pipe, image):
    with pytest.raises(TypeError, match="`image` must be a PIL image"):
        edit(reward_pipe, np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="`image` must be a PIL image"):
        edit(reward_pipe, None)
    with pytest.raises(TypeError, match="`prompt` must be a non-empty string"):
        reward_pipe(image=image, prompt=[], **dummy_qwen_edit_call_kwargs())
    with pytest.raises(ValueError, match="one prompt per call"):
        reward_plus_pipe(image=image, prompt=[PROMPT, PROMPT], **dummy_qwen_edit_call_kwargs())


def test_transformer_refuses_missing_condition_and_replaced_processors(reward_pipe):
    transformer = reward_pipe.transformer
    inputs = transformer_inputs(batch=1)
    with pytest.raises(ValueError, match="needs a reward condition"):
        transformer(**inputs)
    scores = torch.tensor([[5.0, 5.0, 5.0]])
    text_embeds = torch.zeros(1, transformer.config.failure_text_embed_dim)
    with pytest.raises(ValueError, match="shape"):
        transformer(**inputs, reward_scores=torch.ones(1, 2), failure_text_embeds=text_embeds)
    with pytest.raises(TypeError, match="must be a RewardCondition"):
        transformer(**inputs, attention_kwargs={"reward_condition": scores})
    processors = transformer.attn_processors
    try:
        transformer.transformer_blocks[0].attn.set_processor(QwenDoubleStreamAttnProcessor2_0())
        with pytest.raises(ValueError, match="QwenRewardDoubleStreamAttnProcessor"):
            transformer(**inputs, reward_scores=scores, failure_text_embeds=text_embeds)
    finally:
        transformer.set_attn_processor(processors)
    assert isinstance(transformer.transformer_blocks[0].attn.processor, QwenRewardDoubleStreamAttnProcessor)


def test_load_pipeline_and_edit_cli_accept_qwen_folders(reward_pipe, image, tmp_path, caplog):
    from reward_edit_pipeline.cli import main as cli_main
    from reward_edit_pipeline.loading import detect_layout, load_pipeline
    from reward_edit_pipeline.pipelines.reward_dit_common import run_edit

    reward_pipe.save_pretrained(tmp_path / "reward")  # reference areas (32²) are saved with the folder
    stock_folder = save_dummy_qwen_edit_folder(tmp_path / "stock", plus=True)
    assert detect_layout(tmp_path / "reward") == "reward-dit"
    assert detect_layout(stock_folder) == "stock-dit"
    loaded = load_pipeline(tmp_path / "reward", device="cpu")
    assert type(loaded) is RewardQwenImageEditPipeline and loaded.vae_image_area == TINY_REFERENCE_AREA
    with caplog.at_level("WARNING"):
        wrapped = load_pipeline(stock_folder, device="cpu")
    assert type(wrapped) is RewardQwenImageEditPlusPipeline and "zero-initialised" in caplog.text
    assert wrapped.transformer.config.zero_cond_t

    loaded.set_progress_bar_config(disable=True)
    odd = image.resize((40, 36))  # not a multiple of 16: edited at 32×32, returned at the input size
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
    assert cli_main([*argv, "--steps", "2", "--scores", "5,3,5", "--device", "cpu"]) == 0
    assert PIL.Image.open(tmp_path / "out.png").size == (32, 32)


def test_num_images_per_prompt_gives_each_image_its_prompts_rewards(reward_pipe, reward_plus_pipe, image):
    call = dummy_qwen_edit_call_kwargs()
    noise = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(3)).repeat(4, 1, 1)  # same start for all
    out = reward_pipe(
        image=[image, image],
        prompt=[PROMPT, PROMPT],
        reward_scores=[(5, 5, 5), (1, 0, 2)],
        num_images_per_prompt=2,
        latents=noise,
        **call,
    ).images
    assert out.shape[0] == 4
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)  # prompt 0's two images: same rewards, same start
    np.testing.assert_allclose(out[2], out[3], atol=1e-5)
    assert np.abs(out[0] - out[2]).max() > 1e-3
    # -2511 layout (zero_cond_t): the modulation index covers every generated image
    plus = reward_plus_pipe(image=image, prompt=PROMPT, num_images_per_prompt=2, **call).images
    assert plus.shape[0] == 2 and np.isfinite(plus).all()
