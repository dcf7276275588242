"""SmartEdit inference fidelity on tiny models: the LLM input SmartEdit's test script builds, generation of the image
tokens vs. teacher forcing, the guidance batch, the CLIP preprocessing and the edit resolution (docs/smartedit.md,
"Inference as in SmartEdit's test script").

The expected sequences here are written from the documented facts, not from the pipeline's code: SmartEdit's
`vicuna_v1.3` conversation, the first editing request of its template file, `<im_start> <img_0> <im_end>` with the
image features in place of `<img_0>`, and the split of its transformers 4.28 slow LLaMA tokenizer (added tokens cut
out, the whitespace next to them dropped, each remaining piece encoded on its own).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import processors

from reward_edit_pipeline import RewardSmartEditPipeline
from reward_edit_pipeline.convert_smartedit import SMARTEDIT_LLM_DEFAULTS
from reward_edit_pipeline.models.smartedit_bridge import SmartEditBridge
from reward_edit_pipeline.testing_smartedit import (
    NUM_IMAGE_TOKENS,
    get_dummy_bridge,
    get_dummy_llm,
    get_dummy_llm_tokenizer,
    get_dummy_smartedit_components,
)

INSTRUCTION = "make the sky red"
# Written out from SmartEdit's conversation_v01.py ("vicuna_v1.3") and data/ConversationTemplateEditing_use.txt (1.)
SYSTEM_BEFORE_IMG = "A chat between a curious user and an artificial intelligence assistant. The assistant can generate"
SYSTEM_AFTER_IMG = (
    ". The assistant needs to conduct the image to image translation task based on given image and text information."
    " The assistant gives helpful, detailed, and polite answers to the user's questions."
)
REQUEST_BEFORE_IMAGE = ' USER: Could you produce an image based on the previous image and text description "'
REQUEST_AFTER_IMAGE = f'{INSTRUCTION}"? ASSISTANT:'
ANSWER_TEXT = " Certainly, I can create the image you requested"


def _smartedit_conversation_pipeline(llm_generate: bool = False, **bridge_overrides) -> RewardSmartEditPipeline:
    """The tiny pipeline with SmartEdit's conversation: its tokenizer gets `<img>`, `<im_start>`, `<im_end>` (as
    SmartEdit adds them) and a BOS, the LLM a matching vocabulary; float64 throughout."""
    components = get_dummy_smartedit_components()
    tokenizer = get_dummy_llm_tokenizer()
    tokenizer.add_tokens(["<img>"])
    tokenizer.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    settings = {**SMARTEDIT_LLM_DEFAULTS, "llm_generate": llm_generate, **bridge_overrides}
    components.update(llm_tokenizer=tokenizer, llm=get_dummy_llm(len(tokenizer)), bridge=get_dummy_bridge(**settings))
    pipe = RewardSmartEditPipeline(**components).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _chars(pipe: RewardSmartEditPipeline, text: str) -> list[int]:
    """Ids of the tiny character-level vocabulary, one per character."""
    return pipe.llm_tokenizer.convert_tokens_to_ids(list(text))


def _ids(pipe: RewardSmartEditPipeline, *tokens: str) -> list[int]:
    return pipe.llm_tokenizer.convert_tokens_to_ids(list(tokens))


def _image_token_ids(pipe: RewardSmartEditPipeline) -> list[int]:
    return _ids(pipe, *(f"<img_{index}>" for index in range(NUM_IMAGE_TOKENS)))


@pytest.fixture(scope="module")
def vision_features() -> torch.Tensor:
    return torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- LLM input
def test_llm_input_is_smartedits_conversation_token_for_token_and_row_for_row(vision_features):
    pipe = _smartedit_conversation_pipeline()
    bos = [pipe.llm_tokenizer.bos_token_id]
    expected_before = (
        bos
        + _chars(pipe, SYSTEM_BEFORE_IMG)
        + _ids(pipe, "<img>")
        + _chars(pipe, SYSTEM_AFTER_IMG + REQUEST_BEFORE_IMAGE)
        + _ids(pipe, "<im_start>")
    )
    expected_after_prompt = _ids(pipe, "<im_end>") + _chars(pipe, REQUEST_AFTER_IMAGE)
    # teacher forcing: the request's answer as in SmartEdit's training data, " [img]." → " <img_0> … <img_N-1>"
    expected_after = expected_after_prompt + _chars(pipe, ANSWER_TEXT) + _image_token_ids(pipe)

    assert pipe.llm_input_ids(INSTRUCTION) == (expected_before, expected_after)
    assert pipe.llm_input_ids(INSTRUCTION, with_answer=False) == (expected_before, expected_after_prompt)
    # a newline in the instruction is dropped, as SmartEdit drops every "\n" of the conversation
    assert pipe.llm_input_ids("make the sky\n red") == pipe.llm_input_ids("make the sky red")

    with torch.no_grad():
        image_rows = pipe.bridge.project_vision_features(vision_features)
        inputs_embeds, after = pipe.llm_inputs_embeds(INSTRUCTION, image_rows[0])
        table = pipe.llm.get_input_embeddings().weight
        expected_embeds = torch.cat([table[expected_before], image_rows[0], table[expected_after]])
        assert after == expected_after
        assert torch.equal(inputs_embeds[0], expected_embeds)

        # the states read are the LLM's at the image tokens, here the last N rows of one causal pass
        states = pipe.encode_instructions([INSTRUCTION], vision_features, "cpu")
        reference = pipe.llm.model(inputs_embeds=expected_embeds[None]).last_hidden_state[:, -NUM_IMAGE_TOKENS:]
    assert states.shape == (1, NUM_IMAGE_TOKENS, pipe.llm.config.hidden_size)
    assert (states - reference).abs().max() <= 1e-12


def test_custom_template_without_image_field_puts_the_image_first(vision_features):
    """`"{instruction}"`-style templates stay possible: image rows, then the text, then the image tokens."""
    pipe = _smartedit_conversation_pipeline(
        llm_prompt_template="Edit: {instruction}", llm_answer_template="{image_tokens}"
    )
    bos = [pipe.llm_tokenizer.bos_token_id]
    assert pipe.llm_input_ids(INSTRUCTION) == ([], bos + _chars(pipe, "Edit: " + INSTRUCTION) + _image_token_ids(pipe))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"llm_prompt_template": "no field"}, "llm_prompt_template"),
        ({"llm_prompt_template": "{image}{image}{instruction}"}, "llm_prompt_template"),
        ({"llm_prompt_template": "{instruction} {answer}"}, "llm_prompt_template"),
        ({"llm_answer_template": "Sure."}, "llm_answer_template"),
        ({"llm_generate": "yes"}, "llm_generate"),
        ({"llm_max_new_tokens": 0}, "llm_max_new_tokens"),
    ],
)
def test_bad_llm_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmartEditBridge(**{**get_dummy_bridge().config, **kwargs})


# ---------------------------------------------------------------------------------------------------- generation
class _ScriptedHead(torch.nn.Module):
    """Makes the tiny LLM emit `script` (then EOS): the original head's logits plus a large bias on the scripted token
    of each call. Only the emitted ids depend on it; the hidden states are the LLM's own."""

    def __init__(self, head: torch.nn.Module, script: list[int], eos: int) -> None:
        super().__init__()
        self.head, self.script, self.eos, self.calls = head, script, eos, 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden_states).clone()
        token = self.script[self.calls] if self.calls < len(self.script) else self.eos
        logits[..., token] += 1e4
        self.calls += 1
        return logits


@pytest.mark.parametrize("answer", ["smartedit", "right away"])
def test_generation_equals_teacher_forcing_when_the_llm_emits_the_answer(vision_features, answer):
    overrides = {} if answer == "smartedit" else {"llm_answer_template": "{image_tokens}"}
    pipe = _smartedit_conversation_pipeline(**overrides)
    _, prompt_after = pipe.llm_input_ids(INSTRUCTION, with_answer=False)
    _, forced_after = pipe.llm_input_ids(INSTRUCTION)
    script = forced_after[len(prompt_after) :]  # what teacher forcing appends after "ASSISTANT:"
    assert script[-NUM_IMAGE_TOKENS:] == _image_token_ids(pipe)
    assert len(script) == NUM_IMAGE_TOKENS + (len(ANSWER_TEXT) if answer == "smartedit" else 0)
    with torch.no_grad():
        forced = pipe.encode_instructions([INSTRUCTION], vision_features, "cpu")
        pipe.llm.lm_head = _ScriptedHead(pipe.llm.lm_head, script, pipe.llm_tokenizer.eos_token_id)
        with warnings.catch_warnings():  # the key/value cache is passed by the installed transformers' name
            warnings.simplefilter("error", FutureWarning)
            generated = pipe.encode_instructions([INSTRUCTION], vision_features, "cpu", llm_generate=True)
    assert pipe.llm.lm_head.calls == len(script)  # it stopped at the last image token
    assert (generated - forced).abs().max() <= 1e-10
    if answer == "smartedit":  # the answer text changes the states (the comparison above is not vacuous)
        right_away = _smartedit_conversation_pipeline(llm_answer_template="{image_tokens}")
        with torch.no_grad():
            other = right_away.encode_instructions([INSTRUCTION], vision_features, "cpu")
        assert (other - forced).abs().max() > 1e-3


def test_generation_that_misses_the_image_tokens_is_a_clear_error(vision_features):
    pipe = _smartedit_conversation_pipeline(llm_generate=True, llm_max_new_tokens=6)
    eos = pipe.llm_tokenizer.eos_token_id
    text = _chars(pipe, "sure thing")
    pipe.llm.lm_head = _ScriptedHead(pipe.llm.lm_head, text, eos)
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match=r"emitted 0 of the 4 image tokens \(`llm_max_new_tokens`=6\)") as error,
    ):
        pipe.encode_instructions([INSTRUCTION], vision_features, "cpu")
    assert '"llm_generate": false' in str(error.value) and "bridge/config.json" in str(error.value)
    pipe.llm.lm_head = _ScriptedHead(pipe.llm.lm_head.head, _image_token_ids(pipe)[:2], eos)
    with torch.no_grad(), pytest.raises(ValueError, match=r"ended \(EOS\) after 3 generated tokens having emitted 2"):
        pipe.encode_instructions([INSTRUCTION], vision_features, "cpu")
    with pytest.raises(ValueError, match="llm_max_new_tokens"):
        pipe.encode_instructions([INSTRUCTION], vision_features, "cpu", llm_max_new_tokens=0)


# ---------------------------------------------------------------------------------------------------- the edit
@pytest.fixture(scope="module")
def pipe() -> RewardSmartEditPipeline:
    pipe = RewardSmartEditPipeline(**get_dummy_smartedit_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)


def _unet_calls(pipe: RewardSmartEditPipeline, image, **kwargs) -> list[dict]:
    calls = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args, kw: calls.append({"sample": args[0], **kw}), with_kwargs=True
    )
    try:
        pipe(INSTRUCTION, image, num_inference_steps=1, output_type="np", **kwargs)
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize("reward_guidance_scale", [1.0, 2.0])
def test_guidance_batch_rows_are_smartedits(pipe, image, reward_guidance_scale):
    """Rows `[text+image, image-only, unconditional]` (+ the null-reward row): the bridge's text condition in the
    first, the empty prompt's CLIP states in the other two; the image latents in the first two, zeros in the third;
    the BIM residual in every row (SmartEdit's pipeline repeats it for all three)."""
    scores = (4.0, 3.0, 5.0)
    (call,) = _unet_calls(pipe, image, reward_scores=scores, reward_guidance_scale=reward_guidance_scale)
    with torch.no_grad():
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        features = pipe.encode_vision(pixels, "cpu")
        latent_size = (32 // pipe.vae_scale_factor,) * 2
        conditions = pipe.bridge(pipe.encode_instructions([INSTRUCTION], features, "cpu"), features, latent_size)
        null_text = pipe.null_text_condition("cpu")
        image_latents = pipe.vae.encode(pixels * 2 - 1).latent_dist.mode()
    rows = 4 if reward_guidance_scale > 1 else 3
    hidden, residual = call["encoder_hidden_states"], call["conv_in_residual"]
    assert hidden.shape[0] == residual.shape[0] == call["sample"].shape[0] == rows
    text_rows = [0, 3] if rows == 4 else [0]
    for row in range(rows):
        expected = conditions.encoder_hidden_states[0] if row in text_rows else null_text[0]
        torch.testing.assert_close(hidden[row], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(residual[row], conditions.image_residual[0], rtol=0, atol=1e-6)
        image_part = call["sample"][row, 4:]
        if row == 2:
            assert torch.equal(image_part, torch.zeros_like(image_part))
        else:
            torch.testing.assert_close(image_part, image_latents[0], rtol=0, atol=1e-5)
    assert conditions.image_residual.abs().max() > 1e-3 and (hidden[0] - null_text[0]).abs().max() > 1e-3
    torch.testing.assert_close(call["reward_scores"], torch.tensor([scores] * rows))
    if rows == 4:
        assert call["null_reward_mask"].tolist() == [False, False, False, True]


def test_vision_input_is_the_whole_image_squashed_like_smartedit(pipe):
    """SmartEdit: PIL bicubic resize of the whole image to 224 × 224 (here the crop size, 32), then the CLIP processor
    (a no-op resize and crop, rescale, normalise). A centre crop would differ."""
    array = (np.random.RandomState(1).rand(40, 72, 3) * 255).astype(np.uint8)  # H 40, W 72
    smartedit = Image.fromarray(array).resize((32, 32), resample=Image.Resampling.BICUBIC)
    expected = pipe.vision_processor(images=smartedit, return_tensors="pt")["pixel_values"]
    ours = pipe.preprocess_vision(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255)
    cropped = pipe.vision_processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
    # torch's antialiased bicubic vs PIL's on uint8: within two 8-bit levels (/ CLIP std ≈ 0.27)
    assert (ours - expected).abs().max() <= 2 / 255 / 0.26
    assert (cropped - expected).abs().max() > 0.5
    with torch.no_grad():
        features = pipe.encode_vision(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, "cpu")
        hidden = pipe.vision_encoder(ours, output_hidden_states=True).hidden_states
    assert torch.equal(features, hidden[-2][:, 1:])  # LLaVA: penultimate layer, class token dropped


def test_height_and_width_set_the_edit_size(pipe, image):
    """SmartEdit edits at `--resize_resolution` (256): the image is resized before the VAE; the BIM residual follows."""
    (call,) = _unet_calls(pipe, image, height=16, width=24)
    latent_size = (16 // pipe.vae_scale_factor, 24 // pipe.vae_scale_factor)
    assert call["sample"].shape[-2:] == latent_size and call["conv_in_residual"].shape[-2:] == latent_size
    edited = pipe(INSTRUCTION, image, num_inference_steps=1, output_type="np", height=16, width=24).images
    assert edited.shape == (1, 16, 24, 3)
    with pytest.raises(ValueError, match="both `height` and `width`"):
        pipe(INSTRUCTION, image, num_inference_steps=1, height=16)
    with pytest.raises(ValueError, match=f"`width` must be a positive multiple of {pipe.vae_scale_factor}"):
        pipe(INSTRUCTION, image, num_inference_steps=1, height=16, width=pipe.vae_scale_factor + 1)
