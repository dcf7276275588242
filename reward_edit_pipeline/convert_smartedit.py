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

`convert_smartedit_release` is the whole path from a repo id (or a local copy) to a saved pipeline: it downloads only
the needed files of the release and of the repos holding what the release lacks (Vicuna-1.1's config and tokenizer,
the CLIP vision tower, InstructPix2Pix's VAE, text encoder, scheduler and UNet config), builds the parts and converts.
`convert_smartedit` converts a local release folder with parts the caller built.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load_file

from .downloads import converted_cache_dir, download_pipeline_files, list_repo_files, write_folder_aside
from .models.smartedit_bridge import SmartEditBridge, image_token_names

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

#: the SmartEdit releases on the Hub (public SmartEdit README) → the Vicuna-1.1 whose config and tokenizer they need
SMARTEDIT_RELEASES: dict[str, str] = {
    "TencentARC/SmartEdit-7B": "lmsys/vicuna-7b-v1.1",
    "TencentARC/SmartEdit-13B": "lmsys/vicuna-13b-v1.1",
}
#: the released LLM's width → its Vicuna-1.1 (for copies of the release under other names)
VICUNA_BY_WIDTH: dict[int, str] = {4096: "lmsys/vicuna-7b-v1.1", 5120: "lmsys/vicuna-13b-v1.1"}
#: VAE, CLIP text encoder, tokenizer, scheduler and the 8-channel UNet config (SmartEdit's inference uses this repo)
DEFAULT_BASE_MODEL = "timbrooks/instruct-pix2pix"
#: LLaVA-1.1's vision tower and its image processor
DEFAULT_VISION_MODEL = "openai/clip-vit-large-patch14"
#: the training step in the released file names
RELEASE_STEPS = 15000
#: the tokens SmartEdit adds to Vicuna's vocabulary before `<img_0>`…, in order (ids 32000, 32001, 32002), and
#: whether each is added as a special token
CONVERSATION_TOKENS: tuple[tuple[str, bool], ...] = (("<img>", False), ("<im_start>", True), ("<im_end>", True))
#: head counts of the released Q-Former and BIM (tensor shapes do not show them)
RELEASED_HEAD_COUNTS: dict[str, int] = {"qformer_num_heads": 12, "bim_num_heads": 8}
LORA_CONFIG_FILE = "adapter_config.json"
#: what is downloaded from `base_model`, besides the weights in `BASE_MODEL_WEIGHTS` (the UNet's weights come from
#: the release: only its config)
BASE_MODEL_FILES: tuple[str, ...] = (
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/*",
    "scheduler/scheduler_config.json",
    "unet/config.json",
)
#: component → (safetensors file, pickle file); the safetensors file is taken when the repo has it
BASE_MODEL_WEIGHTS: dict[str, tuple[str, str]] = {
    "vae": ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
}
#: what is downloaded from `llm_model`: config and tokenizer only (the release holds the LLM's weights)
LLM_FILES: tuple[str, ...] = (
    "config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
VISION_FILES: tuple[str, ...] = ("config.json", "preprocessor_config.json")
VISION_WEIGHTS: dict[str, tuple[str, str]] = {"vision_encoder": ("model.safetensors", "pytorch_model.bin")}

__all__ = [
    "SMARTEDIT_RELEASES",
    "add_smartedit_tokens",
    "bridge_config_from_released",
    "convert_smartedit",
    "convert_smartedit_release",
    "load_base_components",
    "bridge_state_dict_from_released",
    "llm_state_dict_from_released",
    "load_released_file",
    "released_state_dicts_from_bridge",
    "released_file_names",
    "released_file_paths",
    "smartedit_cache_dir",
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


def released_file_names(steps: int) -> dict[str, str]:
    """The four state-dict files and the LoRA config of a SmartEdit release, as paths inside it."""
    return {
        "llm": f"LLM-{steps}/adapter_model.bin",
        "embeddings_qformer": f"embeddings_qformer/checkpoint-{steps}_embeddings_qformer.bin",
        "bim": f"modulate-{steps}/adapter_model.bin",
        "unet": f"unet-{steps}/adapter_model.bin",
        "lora_config": LORA_CONFIG_FILE,
    }


def released_file_paths(release_dir: str | os.PathLike, steps: int) -> dict[str, Path]:
    """The four state-dict files and the LoRA config of a released SmartEdit folder (see the module docstring)."""
    root = Path(release_dir)
    return {key: root / name for key, name in released_file_names(steps).items()}


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
    *,
    embeddings_qformer: dict[str, torch.Tensor] | None = None,
):
    """Build a `RewardSmartEditPipeline` from a released SmartEdit folder and save it to `output_dir` (if given).

    Args:
        release_dir: the released folder (``SmartEdit-7B/``), laid out as in the module docstring.
        steps: the training step in the file names (15000 for the release).
        base_components: what the release does not hold, already built: `vae`, `text_encoder`, `tokenizer`,
            `scheduler` (Stable Diffusion 1.5 / InstructPix2Pix), `llm` (a `LlamaForCausalLM` of the right config,
            e.g. Vicuna-7B-v1.1, with the vocabulary already resized to `llm_tokenizer`), `llm_tokenizer` (with the
            `<img_i>` tokens), `vision_encoder` (`CLIPVisionModel`, openai/clip-vit-large-patch14) and
            `vision_processor`; and `unet_config` (the SD UNet config with `in_channels=8`). `load_base_components`
            builds them from Hub repos or local folders.
        allow_pickle: read the released `.bin` pickles (with `torch.load(weights_only=True)`).
        embeddings_qformer: the release's `embeddings_qformer` state dict when the caller has already read it
            (`load_released_file`); read from `release_dir` otherwise.
    """
    from diffusers import UNet2DConditionModel

    from .models.unet_2d_reward import RewardUNet2DConditionModel
    from .pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline

    paths = released_file_paths(release_dir, steps)
    if embeddings_qformer is None:
        embeddings_qformer = load_released_file(paths["embeddings_qformer"], allow_pickle)
    bim = load_released_file(paths["bim"], allow_pickle)
    bridge = SmartEditBridge(**bridge_config_from_released(embeddings_qformer, bim, **(bridge_overrides or {})))
    bridge.load_state_dict(bridge_state_dict_from_released(embeddings_qformer, bim), strict=True)

    lora_config = json.loads(paths["lora_config"].read_text(encoding="utf-8"))
    llm = base_components["llm"]
    llm_state = llm_state_dict_from_released(
        load_released_file(paths["llm"], allow_pickle), lora_config, embeddings_qformer["lm_head.weight"]
    )
    llm.load_state_dict(llm_state, strict=True, assign=True)  # `assign`: `llm` may be built on the meta device

    base_unet = UNet2DConditionModel.from_config(base_components["unet_config"])
    base_unet.load_state_dict(
        unet_state_dict_from_released(load_released_file(paths["unet"], allow_pickle)), strict=True
    )
    text_width = base_components["text_encoder"].config.hidden_size
    with torch.random.fork_rng(devices=[]):  # fixed seed: a release always converts to the same folder
        torch.manual_seed(0)
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
    used = [token for token, _ in CONVERSATION_TOKENS if token in bridge.config.llm_prompt_template]
    missing = [token for token in used if token not in pipe.llm_tokenizer.get_added_vocab()]
    if missing:
        raise ValueError(f"`llm_tokenizer` lacks SmartEdit's added tokens {missing} used by `llm_prompt_template`")
    if output_dir is not None:
        pipe.save_pretrained(output_dir)
    return pipe


# ------------------------------------------------------------------------------------------ from the Hub (or a copy)
def add_smartedit_tokens(tokenizer: Any, num_image_tokens: int) -> None:
    """Add SmartEdit's tokens to a Vicuna tokenizer in the release's order: `<img>`, `<im_start>`, `<im_end>` (ids
    32000-32002 for Vicuna's 32000 tokens), then `<img_0>`…`<img_{N-1}>` (32003-32034 for N = 32)."""
    for token, special in CONVERSATION_TOKENS:
        tokenizer.add_tokens([token], special_tokens=special)
    tokenizer.add_tokens(image_token_names(num_image_tokens), special_tokens=False)


def smartedit_cache_dir(repo_id: str, revision: str | None = None, steps: int = RELEASE_STEPS) -> Path:
    """Where `convert_smartedit_release` keeps the conversion of a Hub release when no `output_dir` is given."""
    return converted_cache_dir() / f"{repo_id.replace('/', '--')}--{revision or 'main'}--steps-{steps}"


def _source_files(source: str | os.PathLike, name: str, **download_kwargs: Any) -> list[str]:
    """The files of a local folder (relative paths) or of a Hub repo."""
    if os.path.isdir(source):
        root = Path(source)
        return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    return list_repo_files(os.fspath(source), name=name, **download_kwargs)


def _choose_weight_files(
    available: Collection[str],
    candidates: dict[str, tuple[str, str]],
    allow_pickle: bool,
    where: str,
    hint: str = "",
) -> list[str]:
    """For each `(safetensors, pickle)` pair: the safetensors file when `where` has it, else the pickle file, which
    needs `allow_pickle`. A missing pair is a `FileNotFoundError` naming every missing file."""
    available = set(available)
    chosen: list[str] = []
    pickles: list[str] = []
    missing: list[str] = []
    for safe_name, pickle_name in candidates.values():
        if safe_name in available:
            chosen.append(safe_name)
        elif pickle_name in available:
            chosen.append(pickle_name)
            pickles.append(pickle_name)
        else:
            missing.append(f"{pickle_name} (or {PurePosixPath(safe_name).name})")
    if missing:
        raise FileNotFoundError(f"{where} has no {', '.join(missing)}{hint}")
    if pickles and not allow_pickle:
        raise ValueError(
            f"{where} holds {', '.join(pickles)} only as pickle files, which can run code when loaded; pass "
            "allow_pickle=True (CLI: --allow-pickle) if you trust its source (the files are then read with "
            "torch.load(weights_only=True), which loads tensors only)"
        )
    return chosen


def _fetch(source: str | os.PathLike, files: Sequence[str], name: str, **download_kwargs: Any) -> Path:
    """A local folder as it is, or the listed files of a Hub repo (downloaded, or taken from the Hub cache)."""
    if os.path.isdir(source):
        return Path(source)
    return download_pipeline_files(os.fspath(source), allow_patterns=list(files), name=name, **download_kwargs)


def _fetch_with_weights(
    source: str | os.PathLike,
    files: Sequence[str],
    weights: dict[str, tuple[str, str]],
    name: str,
    allow_pickle: bool,
    **download_kwargs: Any,
) -> Path:
    """`_fetch` of `files` plus the weight files `_choose_weight_files` picks from `weights` (checked against the
    source's file list before anything is downloaded)."""
    chosen = _choose_weight_files(
        _source_files(source, name, **download_kwargs), weights, allow_pickle, _describe(source, name)
    )
    return _fetch(source, [*files, *chosen], name, **download_kwargs)


def _describe(source: str | os.PathLike, name: str, revision: str | None = None) -> str:
    if os.path.isdir(source):
        return f"`{name}` folder {os.fspath(source)!r}"
    return f"`{name}` {os.fspath(source)!r} (revision {revision or 'main'})"


def _fetch_release(
    source: str | os.PathLike, steps: int, allow_pickle: bool, revision: str | None, **download_kwargs: Any
) -> Path:
    """The release folder with the files of `steps` (for a Hub repo: only those are downloaded, after the pickle check)."""
    kwargs = dict(download_kwargs, revision=revision) if not os.path.isdir(source) else {}
    available = _source_files(source, "source", **kwargs)
    names = released_file_names(steps)
    lora_config = names.pop("lora_config")
    found_steps = sorted(
        {int(match.group(1)) for path in available if (match := re.match(r"(?:LLM|modulate|unet)-(\d+)/", path))}
    )
    hint = (
        f" for steps={steps} (steps found in the release: {', '.join(map(str, found_steps))})"
        if found_steps
        else f" for steps={steps} (no LLM-N/, modulate-N/ or unet-N/ folders at all: is it a SmartEdit release?)"
    )
    where = _describe(source, "source", revision)
    candidates = {key: (str(PurePosixPath(name).with_suffix(".safetensors")), name) for key, name in names.items()}
    chosen = _choose_weight_files(available, candidates, allow_pickle, where, hint)
    if lora_config not in available:
        raise FileNotFoundError(f"{where} has no {lora_config} (the LLM's LoRA settings)")
    return _fetch(source, [*chosen, lora_config], "source", **kwargs)


def load_base_components(
    base_model: str | os.PathLike,
    llm_model: str | os.PathLike,
    vision_model: str | os.PathLike,
    *,
    llm_hidden_size: int,
    llm_vocab_size: int,
    allow_pickle: bool = False,
    **download_kwargs: Any,
) -> dict[str, Any]:
    """Build what a SmartEdit release lacks, as `convert_smartedit`'s `base_components`, from Hub repos or local
    folders (for a repo only the listed files are downloaded: `BASE_MODEL_FILES`, `LLM_FILES`, `VISION_FILES` and
    the weights, safetensors preferred, pickles only with `allow_pickle`).

    The LLM is built from `llm_model`'s config on the meta device (no memory; its weights come from the release)
    with `llm_vocab_size` entries; its tokenizer gets `add_smartedit_tokens`, as many image tokens as that size
    leaves (32 for the release: 32035 = 32000 + 3 + 32).
    """
    import diffusers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionModel,
        LlamaForCausalLM,
    )

    base_folder = _fetch_with_weights(
        base_model, BASE_MODEL_FILES, BASE_MODEL_WEIGHTS, "base_model", allow_pickle, **download_kwargs
    )
    unet_config = UNet2DConditionModel.load_config(base_folder, subfolder="unet")
    if unet_config.get("in_channels") != 8:
        raise ValueError(
            f"`base_model` {os.fspath(base_model)!r} has a UNet with in_channels={unet_config.get('in_channels')}; "
            "SmartEdit's UNet takes 8 (noisy latents + image latents): give an InstructPix2Pix-style model such as "
            f"{DEFAULT_BASE_MODEL}"
        )
    scheduler_config = json.loads((base_folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    scheduler_class = getattr(diffusers, str(scheduler_config.get("_class_name")), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ValueError(
            f"`base_model` {os.fspath(base_model)!r}: scheduler/scheduler_config.json names "
            f"{scheduler_config.get('_class_name')!r}, which is not a diffusers scheduler"
        )

    llm_folder = _fetch(llm_model, LLM_FILES, "llm_model", **download_kwargs)
    llm_config = AutoConfig.from_pretrained(llm_folder)
    if llm_config.model_type != "llama" or llm_config.hidden_size != llm_hidden_size:
        raise ValueError(
            f"`llm_model` {os.fspath(llm_model)!r} is a {llm_config.model_type!r} model of width "
            f"{llm_config.hidden_size}; the release's LLM is a LLaMA of width {llm_hidden_size} (SmartEdit-7B: "
            f"{VICUNA_BY_WIDTH[4096]}, SmartEdit-13B: {VICUNA_BY_WIDTH[5120]})"
        )
    llm_tokenizer = AutoTokenizer.from_pretrained(llm_folder)
    num_image_tokens = llm_vocab_size - len(llm_tokenizer) - len(CONVERSATION_TOKENS)
    if num_image_tokens < 1:
        raise ValueError(
            f"the release's LLM has {llm_vocab_size} vocabulary rows, but `llm_model` {os.fspath(llm_model)!r}'s "
            f"tokenizer already has {len(llm_tokenizer)} tokens (+ {len(CONVERSATION_TOKENS)} conversation tokens + "
            "the image tokens): is it the Vicuna-1.1 the release was trained from?"
        )
    add_smartedit_tokens(llm_tokenizer, num_image_tokens)
    llm_config.vocab_size = len(llm_tokenizer)
    with init_empty_weights():
        llm = LlamaForCausalLM(llm_config)

    vision_folder = _fetch_with_weights(
        vision_model, VISION_FILES, VISION_WEIGHTS, "vision_model", allow_pickle, **download_kwargs
    )
    return {
        "vae": AutoencoderKL.from_pretrained(base_folder, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(base_folder, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(base_folder, subfolder="tokenizer"),
        "scheduler": scheduler_class.from_pretrained(base_folder, subfolder="scheduler"),
        "unet_config": unet_config,
        "llm": llm,
        "llm_tokenizer": llm_tokenizer,
        "vision_encoder": CLIPVisionModel.from_pretrained(vision_folder).eval(),
        "vision_processor": CLIPImageProcessor.from_pretrained(vision_folder),
    }


def convert_smartedit_release(
    source: str | os.PathLike = "TencentARC/SmartEdit-7B",
    *,
    steps: int = RELEASE_STEPS,
    revision: str | None = None,
    base_model: str | os.PathLike = DEFAULT_BASE_MODEL,
    llm_model: str | os.PathLike | None = None,
    vision_model: str | os.PathLike = DEFAULT_VISION_MODEL,
    allow_pickle: bool = False,
    output_dir: str | os.PathLike | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    bridge_overrides: dict[str, Any] | None = None,
) -> Path:
    """Convert a SmartEdit release (a Hub repo id such as ``TencentARC/SmartEdit-7B``, or a local copy) into a saved
    `RewardSmartEditPipeline` folder and return that folder.

    Only the needed files are downloaded: from `source` the four state dicts of `steps` and `adapter_config.json`;
    from `base_model` (InstructPix2Pix) the VAE, CLIP text encoder, tokenizer, scheduler and the UNet's config; from
    `llm_model` (default: the Vicuna-1.1 of the release's size) config and tokenizer; from `vision_model` (CLIP
    ViT-L/14) the vision tower and processor. A file is taken as ``.safetensors`` when the repo has it; the release's
    ``.bin`` pickles need `allow_pickle=True`, checked before anything is downloaded.

    Without `output_dir` (Hub sources only) the result goes to the converted cache (`smartedit_cache_dir`, written
    aside and then renamed), and later calls, `load_pipeline(source)` included, reuse it without the network. `token`
    is passed to the Hub client (default: its own lookup, ``HF_TOKEN`` or the login), `cache_dir` is the Hugging
    Face download cache; `revision` applies to `source`.
    `bridge_overrides` sets `SmartEditBridge` config values that the tensors do not show (defaults:
    `RELEASED_HEAD_COUNTS`, `llm_prompt_template`).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer (the release's is {RELEASE_STEPS}), got {steps!r}")
    is_local = os.path.isdir(source)
    if output_dir is None:
        if is_local:
            raise ValueError(
                f"`output_dir` is needed to convert the local folder {os.fspath(source)!r} (the converted cache holds "
                "conversions of Hub repos only)"
            )
        target = smartedit_cache_dir(os.fspath(source), revision, steps)
        if (target / "model_index.json").is_file():
            return target
    download_kwargs: dict[str, Any] = {"token": token, "cache_dir": cache_dir}
    release_dir = _fetch_release(source, steps, allow_pickle, revision, **download_kwargs)
    embeddings_qformer = load_released_file(released_file_paths(release_dir, steps)["embeddings_qformer"], allow_pickle)
    llm_vocab_size, llm_hidden_size = embeddings_qformer["lm_head.weight"].shape
    if llm_model is None:
        llm_model = SMARTEDIT_RELEASES.get(os.fspath(source)) or VICUNA_BY_WIDTH.get(llm_hidden_size)
        if llm_model is None:
            raise ValueError(
                f"the release's LLM has width {llm_hidden_size}, which is neither SmartEdit-7B's (4096) nor -13B's "
                "(5120): give `llm_model` (the repo or folder with its config and tokenizer)"
            )
    base_components = load_base_components(
        base_model,
        llm_model,
        vision_model,
        llm_hidden_size=llm_hidden_size,
        llm_vocab_size=llm_vocab_size,
        allow_pickle=allow_pickle,
        **download_kwargs,
    )
    overrides = dict(RELEASED_HEAD_COUNTS, **(bridge_overrides or {}))
    llm_tokenizer = base_components["llm_tokenizer"]  # the image tokens come last: N = size - id of <img_0>
    num_image_tokens = len(llm_tokenizer) - llm_tokenizer.convert_tokens_to_ids(image_token_names(1)[0])
    if overrides.setdefault("num_image_tokens", num_image_tokens) != num_image_tokens:
        raise ValueError(
            f"`bridge_overrides` sets num_image_tokens={overrides['num_image_tokens']}, but the release's vocabulary "
            f"holds {num_image_tokens} image tokens"
        )
    pipe = convert_smartedit(
        release_dir,
        steps,
        base_components,
        allow_pickle=allow_pickle,
        bridge_overrides=overrides,
        embeddings_qformer=embeddings_qformer,  # read once, above
    )
    if output_dir is not None:
        pipe.save_pretrained(output_dir)
        return Path(output_dir)
    return write_folder_aside(target, pipe.save_pretrained)
