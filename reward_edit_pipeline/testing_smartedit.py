"""Tiny random-weight SmartEdit components for tests and CI, built in code (no network, seconds on a CPU).

The LLM tokenizer is a `tokenizers` BPE over single characters with `<unk>`, `<s>`, `</s>` and the added image tokens
`<img_0>`…; the LLM is a 2-layer transformers `LlamaForCausalLM`; the vision tower a 2-layer `CLIPVisionModel`
(32×32 input, 8×8 patches → a 4×4 grid); the UNet our `RewardUNet2DConditionModel` with 8 input channels.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
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
    save_dummy_instruct_pix2pix_folder,
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


# ------------------------------------------------------------------------------------ the released layout, Hub repos
def write_dummy_released_layout(pipe, root: str | os.PathLike, steps: int, generator: torch.Generator):
    """A folder in the released SmartEdit layout, made from `pipe` (pickles, as released), with LoRA A/B weights on
    two LLM projections. Returns the LLM state dict the converter must produce (LoRA merged)."""
    from .convert_smartedit import released_file_names, released_state_dicts_from_bridge

    root = Path(root)
    rank, alpha = 2, 4
    llm_state = pipe.llm.state_dict()
    released_llm, expected = {}, {}
    for key, value in llm_state.items():
        if key == "lm_head.weight":
            continue
        inner = key[len("model.") :]
        if inner in ("layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"):
            module = inner[: -len(".weight")]
            down = torch.randn(rank, value.shape[1], generator=generator)
            up = torch.randn(value.shape[0], rank, generator=generator)
            released_llm[f"model.base_model.model.{module}.base_layer.weight"] = value.clone()
            released_llm[f"model.base_model.model.{module}.lora_A.default.weight"] = down
            released_llm[f"model.base_model.model.{module}.lora_B.default.weight"] = up
            expected[key] = value + (alpha / rank) * up @ down
        else:
            released_llm[f"model.base_model.model.{inner}"] = value.clone()
            expected[key] = value
    expected["lm_head.weight"] = llm_state["lm_head.weight"]
    embeddings_qformer, bim = released_state_dicts_from_bridge(pipe.bridge, lm_head=llm_state["lm_head.weight"])
    unet_state = {
        f"unet.{key}": value.clone()
        for key, value in pipe.unet.state_dict().items()
        if not key.startswith(("reward_", "failure_text_", "latent_reward_attention"))
    }
    names = released_file_names(steps)
    states = {"llm": released_llm, "embeddings_qformer": embeddings_qformer, "bim": bim, "unet": unet_state}
    for key, state in states.items():
        (root / names[key]).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, root / names[key])
    (root / names["lora_config"]).write_text(json.dumps({"r": rank, "lora_alpha": alpha}))
    return expected


def get_dummy_release_pipeline(seed: int = 0):
    """A tiny plain SmartEdit pipeline (zero-initialised rewards) whose LLM tokenizer is the tiny base tokenizer
    extended as the release's (`add_smartedit_tokens`: `<img>`, `<im_start>`, `<im_end>`, then the image tokens)."""
    from .convert_smartedit import add_smartedit_tokens
    from .pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline

    components = get_dummy_smartedit_components(seed, reward_init="zero")
    llm_tokenizer = get_dummy_llm_tokenizer(num_image_tokens=0)
    add_smartedit_tokens(llm_tokenizer, NUM_IMAGE_TOKENS)
    components.update(llm_tokenizer=llm_tokenizer, llm=get_dummy_llm(len(llm_tokenizer), seed))
    pipe = RewardSmartEditPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_dummy_smartedit_sources(pipe, root: str | os.PathLike, steps: int = 15000, seed: int = 0) -> dict[str, Path]:
    """Folders laid out as the four Hub repos a SmartEdit conversion reads, made from `pipe`
    (`get_dummy_release_pipeline`): ``release`` (the released pickles), ``base`` (a stock InstructPix2Pix folder),
    ``llm`` (config with the base vocabulary + tokenizer, no weights, as Vicuna's) and ``vision`` (a full
    `CLIPModel` folder whose vision tower is `pipe`'s, as openai/clip-vit-large-patch14; plus its processor)."""
    root = Path(root)
    folders = {name: root / name for name in ("release", "base", "llm", "vision")}
    write_dummy_released_layout(pipe, folders["release"], steps, torch.Generator().manual_seed(seed + 3))
    save_dummy_instruct_pix2pix_folder(folders["base"], seed=seed)
    base_tokenizer = get_dummy_llm_tokenizer(num_image_tokens=0)
    base_tokenizer.save_pretrained(folders["llm"])
    llm_config = pipe.llm.config.to_dict()
    llm_config["vocab_size"] = len(base_tokenizer)
    LlamaConfig(**llm_config).save_pretrained(folders["llm"])
    vision_config = pipe.vision_encoder.config
    clip_config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config=vision_config.to_dict(),
        projection_dim=vision_config.projection_dim,
    )
    torch.manual_seed(seed + 4)
    clip = CLIPModel(clip_config)
    clip.vision_model.load_state_dict(pipe.vision_encoder.state_dict())
    clip.save_pretrained(folders["vision"])
    pipe.vision_processor.save_pretrained(folders["vision"])
    return folders
