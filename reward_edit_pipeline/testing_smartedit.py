"""Tiny random-weight SmartEdit components for tests and CI, built in code (no network, seconds on a CPU).

The LLM tokenizer is a `tokenizers` BPE over single characters with `<unk>`, `<s>`, `</s>` and the added image tokens
`<img_0>`…; the LLM is a 2-layer transformers `LlamaForCausalLM`; the vision tower a 2-layer `CLIPVisionModel`
(32×32 input, 8×8 patches → a 4×4 grid); the UNet our `RewardUNet2DConditionModel` with 8 input channels.
"""

from __future__ import annotations

import string
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from .models.smartedit_bridge import SmartEditBridge
from .models.unet_2d_reward import RewardUNet2DConditionModel
from .testing import (
    TEXT_WIDTH,
    get_dummy_scheduler,
    get_dummy_text_encoder,
    get_dummy_tokenizer,
    get_dummy_unet_config,
    get_dummy_vae,
)

LLM_WIDTH = 32
VISION_WIDTH = 16
VISION_IMAGE_SIZE = 32
NUM_IMAGE_TOKENS = 4


def get_dummy_llm_tokenizer(num_image_tokens: int = NUM_IMAGE_TOKENS) -> PreTrainedTokenizerFast:
    """Character-level tokenizer (printable ASCII) with LLaMA's special tokens and the SmartEdit image tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for character in string.printable:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    tokenizer.add_tokens([f"<img_{index}>" for index in range(num_image_tokens)])
    return tokenizer


def get_dummy_llm(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=LLM_WIDTH,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def get_dummy_vision_encoder(seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VISION_IMAGE_SIZE,
        patch_size=8,
        projection_dim=VISION_WIDTH,
    )
    return CLIPVisionModel(config).eval()


def get_dummy_vision_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": VISION_IMAGE_SIZE}, crop_size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE}
    )


def get_dummy_bridge_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "llm_hidden_size": LLM_WIDTH,
        "vision_hidden_size": VISION_WIDTH,
        "num_image_tokens": NUM_IMAGE_TOKENS,
        "num_query_tokens": 77,
        "qformer_hidden_size": TEXT_WIDTH,
        "qformer_num_layers": 2,
        "qformer_num_heads": 4,
        "qformer_intermediate_size": 40,
        "bim_embed_dim": VISION_WIDTH,
        "bim_depth": 2,
        "bim_num_heads": 2,
        "bim_mlp_dim": 24,
        "unet_conv_in_channels": get_dummy_unet_config()["block_out_channels"][0],
        "llm_prompt_template": "Edit: {instruction}",
    }
    config.update(overrides)
    return config


def get_dummy_bridge(seed: int = 0, zero_residuals: bool = False, **overrides: Any) -> SmartEditBridge:
    """A tiny bridge; with `zero_residuals=False` (default) its zero-initialised output heads get random weights, so
    the BIM changes the result."""
    torch.manual_seed(seed)
    bridge = SmartEditBridge(**get_dummy_bridge_config(**overrides))
    if not zero_residuals:
        for module in (bridge.image_residual_proj, bridge.text_residual_proj):
            torch.nn.init.normal_(module.weight, std=0.2)
            torch.nn.init.normal_(module.bias, std=0.2)
    return bridge.eval()


def get_dummy_smartedit_components(seed: int = 0, reward_init: str = "default") -> dict[str, Any]:
    """Components of a tiny `RewardSmartEditPipeline` (`reward_init="zero"`: plain SmartEdit behaviour)."""
    torch.manual_seed(seed)
    base_unet = UNet2DConditionModel(**get_dummy_unet_config(in_channels=8))
    torch.manual_seed(seed + 1)
    unet = RewardUNet2DConditionModel.from_unet(base_unet, reward_init=reward_init, failure_text_embed_dim=TEXT_WIDTH)
    tokenizer = get_dummy_tokenizer()
    llm_tokenizer = get_dummy_llm_tokenizer()
    return {
        "vae": get_dummy_vae(seed).eval(),
        "text_encoder": get_dummy_text_encoder(tokenizer, seed),
        "tokenizer": tokenizer,
        "unet": unet.eval(),
        "scheduler": get_dummy_scheduler(),
        "llm": get_dummy_llm(len(llm_tokenizer), seed),
        "llm_tokenizer": llm_tokenizer,
        "vision_encoder": get_dummy_vision_encoder(seed),
        "vision_processor": get_dummy_vision_processor(),
        "bridge": get_dummy_bridge(seed),
        "safety_checker": None,
        "feature_extractor": None,
    }


def get_dummy_smartedit_pipeline(seed: int = 0, reward_init: str = "default"):
    from .pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline

    pipe = RewardSmartEditPipeline(**get_dummy_smartedit_components(seed, reward_init))
    pipe.set_progress_bar_config(disable=True)
    return pipe
