"""Convert the released SmartEdit checkpoints (TencentARC/SmartEdit) into a `RewardSmartEditPipeline` folder.

The released layout (one folder per model, e.g. ``SmartEdit-7B/``; `N` = training steps)::

    adapter_config.json                                   LoRA settings of the LLM (r, lora_alpha)
    LLM-N/adapter_model.bin                               the LLaMA (PEFT-wrapped: base weights + LoRA A/B),
                                                          keys `model.base_model.model.<LlamaModel key>`
    embeddings_qformer/checkpoint-N_embeddings_qformer.bin  `lm_head.weight`, `mm_projector.*`, `sd_query_tokens`,
                                                          `sd_qformer.*` (BLIP-2-style BERT Q-Former)
    modulate-N/adapter_model.bin                          the BIM: `modulate_head.*`, `modulate_transformer.*`,
                                                          `pe_layer.positional_encoding_gaussian_matrix`,
                                                          `dimension_reduction_head_zeroconv.*`,
                                                          `dimension_reduction_head_qformer_out.*`
    unet-N/adapter_model.bin                              the 8-channel UNet, keys `unet.<UNet2DConditionModel key>`

These files are pickles (``.bin``): they are read only with `allow_pickle=True` (then with
`torch.load(weights_only=True)`, which loads tensors and refuses code). A ``.safetensors`` file of the same stem next
to a ``.bin`` is preferred. The released UNet has no reward modules: it is wrapped as a `RewardUNet2DConditionModel`
with zero-initialised reward paths (`reward_init="zero"`), so the converted pipeline edits like SmartEdit until it is
trained with rewards (`reward-edit train --backbone smartedit`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .models.smartedit_bridge import SmartEditBridge

QFORMER_PREFIX = "sd_qformer."
#: released BIM prefixes → `SmartEditBridge` prefixes
BIM_RENAMES: tuple[tuple[str, str], ...] = (
    ("modulate_head.", "query_proj."),
    ("modulate_transformer.", "two_way_transformer."),
    ("pe_layer.positional_encoding_gaussian_matrix", "position_encoding.gaussian_matrix"),
    ("dimension_reduction_head_zeroconv.", "image_residual_proj."),
    ("dimension_reduction_head_qformer_out.", "text_residual_proj."),
)
LLM_PREFIX = "model.base_model.model."

__all__ = [
    "bridge_config_from_released",
    "bridge_state_dict_from_released",
    "llm_state_dict_from_released",
    "load_released_file",
    "released_state_dicts_from_bridge",
    "released_file_paths",
    "unet_state_dict_from_released",
]


def load_released_file(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read one released state dict: `<stem>.safetensors` if present, else the pickle `.bin` with `allow_pickle`."""
    path = Path(path)
    safetensors_path = path.with_suffix(".safetensors")
    if safetensors_path.is_file():
        return load_file(str(safetensors_path))
    if not path.is_file():
        raise FileNotFoundError(f"released SmartEdit file {str(path)!r} not found")
    if not allow_pickle:
        raise ValueError(
            f"{str(path)!r} is a pickle file; pickle files can run code. Pass allow_pickle=True (CLI: --allow-pickle) "
            "if you trust its source (it is then read with torch.load(weights_only=True))"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def released_file_paths(release_dir: str | os.PathLike, steps: int) -> dict[str, Path]:
    """The four state-dict files and the LoRA config of a released SmartEdit folder (see the module docstring)."""
    root = Path(release_dir)
    return {
        "llm": root / f"LLM-{steps}" / "adapter_model.bin",
        "embeddings_qformer": root / "embeddings_qformer" / f"checkpoint-{steps}_embeddings_qformer.bin",
        "bim": root / f"modulate-{steps}" / "adapter_model.bin",
        "unet": root / f"unet-{steps}" / "adapter_model.bin",
        "lora_config": root / "adapter_config.json",
    }


def _qformer_key(released_key: str) -> str | None:
    rest = released_key[len(QFORMER_PREFIX) :]
    if rest.startswith("embeddings.position_ids"):
        return None  # a buffer of BERT's (unused) position embeddings
    if rest.startswith("embeddings.LayerNorm."):
        return "qformer.layernorm." + rest.rsplit(".", 1)[1]
    rest = rest.replace(".attention.self.", ".attention.attention.").replace(
        ".crossattention.self.", ".crossattention.attention."
    )
    return "qformer." + rest


def bridge_state_dict_from_released(
    embeddings_qformer: dict[str, torch.Tensor], bim: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Released `embeddings_qformer` + BIM state dicts → `SmartEditBridge` keys (`lm_head` and LLM embeddings in the
    first file are left out: they belong to the LLM)."""
    state_dict: dict[str, torch.Tensor] = {
        "vision_projection.weight": embeddings_qformer["mm_projector.weight"],
        "vision_projection.bias": embeddings_qformer["mm_projector.bias"],
        "query_tokens": embeddings_qformer["sd_query_tokens"].float(),
    }
    for key, value in embeddings_qformer.items():
        if key.startswith(QFORMER_PREFIX):
            new_key = _qformer_key(key)
            if new_key is not None:
                state_dict[new_key] = value
    for key, value in bim.items():
        for old, new in BIM_RENAMES:
            if key.startswith(old):
                state_dict[new + key[len(old) :]] = value
                break
        else:
            raise ValueError(
                f"unexpected key {key!r} in the released BIM file (expected {[p for p, _ in BIM_RENAMES]})"
            )
    return state_dict


def released_state_dicts_from_bridge(
    bridge: SmartEditBridge, lm_head: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse of `bridge_state_dict_from_released`: `(embeddings_qformer, bim)` in the released key names
    (for tests and for exporting a bridge to the original code)."""
    embeddings_qformer: dict[str, torch.Tensor] = {}
    bim: dict[str, torch.Tensor] = {}
    for key, value in bridge.state_dict().items():
        value = value.detach().clone()
        if key.startswith("vision_projection."):
            embeddings_qformer["mm_projector." + key.split(".", 1)[1]] = value
        elif key == "query_tokens":
            embeddings_qformer["sd_query_tokens"] = value
        elif key.startswith("qformer.layernorm."):
            embeddings_qformer["sd_qformer.embeddings.LayerNorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("qformer."):
            rest = key[len("qformer.") :].replace(".attention.attention.", ".attention.self.")
            rest = rest.replace(".crossattention.attention.", ".crossattention.self.")
            embeddings_qformer[QFORMER_PREFIX + rest] = value
        else:
            for old, new in BIM_RENAMES:
                if key.startswith(new):
                    bim[old + key[len(new) :]] = value
                    break
            else:
                raise ValueError(f"bridge key {key!r} has no released name")
    if lm_head is not None:
        embeddings_qformer["lm_head.weight"] = lm_head.detach().clone()
    return embeddings_qformer, bim


#: SmartEdit's conversation at inference (test/DS_SmartEdit_test.py with conversation_v01.py and
#: data/ConversationTemplateEditing_use.txt): the "vicuna_v1.3" system message and roles ("USER: " … " ASSISTANT:"),
#: the first of the 30 editing requests (SmartEdit draws one at random per image), the instruction quoted after the
#: image wrapped in `<im_start>` … `<im_end>`. See docs/smartedit.md.
SMARTEDIT_SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant can generate <img>. "
    "The assistant needs to conduct the image to image translation task based on given image and text information. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SMARTEDIT_PROMPT_TEMPLATE = (
    SMARTEDIT_SYSTEM_MESSAGE + " USER: Could you produce an image based on the previous image and text description "
    '"<im_start> {image} <im_end>{instruction}"? ASSISTANT:'
)
#: The answer of the same request in SmartEdit's training data, " [img]." replaced by the image tokens.
SMARTEDIT_ANSWER_TEMPLATE = " Certainly, I can create the image you requested {image_tokens}"
#: Tokens SmartEdit adds to the LLaMA tokenizer besides `<img_0>` … `<img_31>`.
SMARTEDIT_CONVERSATION_TOKENS = ("<img>", "<im_start>", "<im_end>")
SMARTEDIT_LLM_DEFAULTS: dict[str, Any] = {
    "llm_prompt_template": SMARTEDIT_PROMPT_TEMPLATE,
    "llm_answer_template": SMARTEDIT_ANSWER_TEMPLATE,
    "llm_generate": True,
    "llm_max_new_tokens": 512,
}


def bridge_config_from_released(
    embeddings_qformer: dict[str, torch.Tensor], bim: dict[str, torch.Tensor], **overrides: Any
) -> dict[str, Any]:
    """A `SmartEditBridge` config read from the released tensors' shapes; head counts (not visible in shapes) default
    to SmartEdit's (Q-Former 12, BIM 8) and may be overridden, like `num_image_tokens` (32) and the LLM's
    conversation (`SMARTEDIT_LLM_DEFAULTS`: SmartEdit's templates, generation as in its inference)."""
    layer_ids = {
        int(m.group(1)) for k in embeddings_qformer if (m := re.match(r"sd_qformer\.encoder\.layer\.(\d+)\.", k))
    }
    bim_layers = {int(m.group(1)) for k in bim if (m := re.match(r"modulate_transformer\.layers\.(\d+)\.", k))}
    cross_layers = sorted(
        {
            int(m.group(1))
            for k in embeddings_qformer
            if (m := re.match(r"sd_qformer\.encoder\.layer\.(\d+)\.crossattention", k))
        }
    )
    frequency = cross_layers[1] - cross_layers[0] if len(cross_layers) > 1 else max(len(layer_ids), 1)
    projector = embeddings_qformer["mm_projector.weight"]
    config = {
        "llm_hidden_size": projector.shape[0],
        "vision_hidden_size": projector.shape[1],
        "num_query_tokens": embeddings_qformer["sd_query_tokens"].shape[1],
        "qformer_hidden_size": embeddings_qformer["sd_query_tokens"].shape[2],
        "qformer_num_layers": len(layer_ids),
        "qformer_intermediate_size": embeddings_qformer[
            "sd_qformer.encoder.layer.0.intermediate_query.dense.weight"
        ].shape[0],
        "qformer_cross_attention_frequency": frequency,
        "bim_embed_dim": bim["modulate_head.weight"].shape[0],
        "bim_depth": len(bim_layers),
        "bim_mlp_dim": bim["modulate_transformer.layers.0.mlp.lin1.weight"].shape[0],
        "unet_conv_in_channels": bim["dimension_reduction_head_zeroconv.weight"].shape[0],
        **SMARTEDIT_LLM_DEFAULTS,
    }
    config.update(overrides)
    return config


def _lora_scale(lora_config: dict[str, Any]) -> float:
    rank, alpha = lora_config.get("r"), lora_config.get("lora_alpha")
    if not rank or alpha is None:
        raise ValueError(f"the LoRA config needs `r` and `lora_alpha`, got {lora_config}")
    return float(alpha) / float(rank)


def llm_state_dict_from_released(
    llm: dict[str, torch.Tensor], lora_config: dict[str, Any], lm_head: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Released LLM file (PEFT-wrapped `LlamaModel`: base weights + LoRA A/B) → `LlamaForCausalLM` keys, LoRA merged
    (`W + (lora_alpha / r) · B A`); `lm_head` comes from the `embeddings_qformer` file."""
    scale = _lora_scale(lora_config)
    plain: dict[str, torch.Tensor] = {}
    lora_a: dict[str, torch.Tensor] = {}
    lora_b: dict[str, torch.Tensor] = {}
    for key, value in llm.items():
        if not key.startswith(LLM_PREFIX):
            raise ValueError(f"unexpected key {key!r} in the released LLM file (expected the prefix {LLM_PREFIX!r})")
        key = key[len(LLM_PREFIX) :]
        match = re.match(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if match:
            (lora_a if match.group(2) == "A" else lora_b)[match.group(1)] = value
        else:
            plain[key.replace(".base_layer.", ".")] = value
    if set(lora_a) != set(lora_b):
        raise ValueError(f"LoRA A/B weights do not pair up: {sorted(set(lora_a) ^ set(lora_b))[:4]}")
    for module, down in lora_a.items():
        base_key = f"{module}.weight"
        if base_key not in plain:
            raise ValueError(f"LoRA weights for {module!r} but no base weight")
        merged = plain[base_key].double() + scale * (lora_b[module].double() @ down.double())
        plain[base_key] = merged.to(plain[base_key].dtype)
    state_dict = {f"model.{key}": value for key, value in plain.items()}
    state_dict["lm_head.weight"] = lm_head
    return state_dict


def unet_state_dict_from_released(unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released UNet file (`unet.<key>`) → `UNet2DConditionModel` keys."""
    bad = [key for key in unet if not key.startswith("unet.")]
    if bad:
        raise ValueError(f"unexpected keys in the released UNet file (expected the prefix 'unet.'): {bad[:4]}")
    return {key[len("unet.") :]: value for key, value in unet.items()}


def convert_smartedit(
    release_dir: str | os.PathLike,
    steps: int,
    base_components: dict[str, Any],
    output_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    bridge_overrides: dict[str, Any] | None = None,
):
    """Build a `RewardSmartEditPipeline` from a released SmartEdit folder and save it to `output_dir` (if given).

    Args:
        release_dir: the released folder (``SmartEdit-7B/``), laid out as in the module docstring.
        steps: the training step in the file names (15000 for the release).
        base_components: what the release does not hold, already built: `vae`, `text_encoder`, `tokenizer`,
            `scheduler` (Stable Diffusion 1.5 / InstructPix2Pix), `llm` (a `LlamaForCausalLM` of the right config,
            e.g. Vicuna-7B-v1.1, with the vocabulary already resized to `llm_tokenizer`), `llm_tokenizer` (with the
            `<img_i>` tokens), `vision_encoder` (`CLIPVisionModel`, openai/clip-vit-large-patch14) and
            `vision_processor`; and `unet_config` (the SD UNet config with `in_channels=8`).
        allow_pickle: read the released `.bin` pickles (with `torch.load(weights_only=True)`).
    """
    from diffusers import UNet2DConditionModel

    from .models.unet_2d_reward import RewardUNet2DConditionModel
    from .pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline

    paths = released_file_paths(release_dir, steps)
    embeddings_qformer = load_released_file(paths["embeddings_qformer"], allow_pickle)
    bim = load_released_file(paths["bim"], allow_pickle)
    bridge = SmartEditBridge(**bridge_config_from_released(embeddings_qformer, bim, **(bridge_overrides or {})))
    bridge.load_state_dict(bridge_state_dict_from_released(embeddings_qformer, bim), strict=True)

    lora_config = json.loads(paths["lora_config"].read_text(encoding="utf-8"))
    llm = base_components["llm"]
    llm_state = llm_state_dict_from_released(
        load_released_file(paths["llm"], allow_pickle), lora_config, embeddings_qformer["lm_head.weight"]
    )
    llm.load_state_dict(llm_state, strict=True)

    base_unet = UNet2DConditionModel(**base_components["unet_config"])
    base_unet.load_state_dict(
        unet_state_dict_from_released(load_released_file(paths["unet"], allow_pickle)), strict=True
    )
    text_width = base_components["text_encoder"].config.hidden_size
    unet = RewardUNet2DConditionModel.from_unet(base_unet, reward_init="zero", failure_text_embed_dim=text_width)

    pipe = RewardSmartEditPipeline(
        vae=base_components["vae"],
        text_encoder=base_components["text_encoder"],
        tokenizer=base_components["tokenizer"],
        unet=unet.eval(),
        scheduler=base_components["scheduler"],
        llm=llm.eval(),
        llm_tokenizer=base_components["llm_tokenizer"],
        vision_encoder=base_components["vision_encoder"],
        vision_processor=base_components["vision_processor"],
        bridge=bridge.eval(),
    )
    pipe.image_token_ids()  # the tokenizer carries the image tokens and the LLM's vocabulary covers them
    used = [token for token in SMARTEDIT_CONVERSATION_TOKENS if token in bridge.config.llm_prompt_template]
    missing = [token for token in used if token not in pipe.llm_tokenizer.get_added_vocab()]
    if missing:
        raise ValueError(f"`llm_tokenizer` lacks SmartEdit's added tokens {missing} used by `llm_prompt_template`")
    if output_dir is not None:
        pipe.save_pretrained(output_dir)
    return pipe
