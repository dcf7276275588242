"""What the DiT reward pipelines (FLUX.1 Kontext, Qwen-Image-Edit) share.

- reward inputs → tensors: `prepare_reward_inputs` (scores validated by `reward_edit_pipeline.rewards`, failure text
  resolved there too) and `encode_unique_texts` (each distinct failure text is encoded once per call);
- the reward condition handed to a transformer for one call (`RewardCondition`, built once per call by
  `build_reward_condition`) and the reward-guidance combination (`combine_reward_guidance`);
- saving and loading: the `model_index.json` rewrite and loader shims that make a saved folder load both with
  `<PipelineClass>.from_pretrained(folder)` and `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..devices import normalize_dtype_kwarg
from ..downloads import DOWNLOAD_KWARGS, apply_pickle_rule, download_pipeline_files
from ..models.reward_conditioner import RewardConditioner
from ..models.reward_dit_condition import RewardCondition, combine_reward_guidance, validate_reward_guidance_scale
from ..rewards import BEST_SCORES, parse_reward_scores, resolve_failure_text

PUBLIC_LIBRARY = "reward_edit_pipeline"
logger = logging.getLogger(__name__)

__all__ = [
    "RewardCondition",
    "RewardInputs",
    "build_reward_condition",
    "combine_reward_guidance",
    "encode_unique_texts",
    "prepare_reward_inputs",
    "prepare_reward_scores",
    "read_saved_model_index",
    "resolve_failure_texts",
    "rewrite_saved_model_index",
    "run_edit",
    "validate_reward_guidance_scale",
]

ScoreInput = Sequence[float] | Sequence[Sequence[float]] | torch.Tensor | np.ndarray
FailureTextInput = str | tuple[str | None, ...] | list[str | tuple[str | None, ...] | None] | None


def prepare_reward_scores(reward_scores: ScoreInput, batch_size: int) -> torch.Tensor:
    """Validate `reward_scores` with `reward_edit_pipeline.rewards.parse_reward_scores` (a triple, a text such as
    ``"5,5,5"``, a list of `batch_size` triples, or an array/tensor `[3]`/`[batch_size, 3]`; values in [0, 5], nothing
    clamped) and return a float32 `[batch_size, 3]` tensor."""
    return torch.tensor(
        parse_reward_scores(reward_scores, batch_size=batch_size, name="reward_scores"), dtype=torch.float32
    )


def resolve_failure_texts(failure_text: FailureTextInput, batch_size: int, no_failure_text: str) -> list[str]:
    """One failure-text string per prompt (`reward_edit_pipeline.rewards.resolve_failure_text`: `None`, `""` or blank
    → `no_failure_text`); a list gives one entry per prompt, anything else applies to all."""
    if isinstance(failure_text, list):
        if len(failure_text) != batch_size:
            raise ValueError(
                f"`failure_text` as a list needs one entry per prompt ({batch_size}), got {len(failure_text)}; "
                "pass a tuple for per-perspective texts (following, preserving, quality)"
            )
        return [resolve_failure_text(entry, no_failure_text) for entry in failure_text]
    return [resolve_failure_text(failure_text, no_failure_text)] * batch_size


@dataclass(frozen=True)
class RewardInputs:
    """Validated reward inputs of one pipeline call (one row per prompt)."""

    reward_scores: torch.Tensor  # [batch, 3] float32
    failure_texts: list[str]
    use_null_reward: bool
    reward_guidance_scale: float


def prepare_reward_inputs(
    reward_scores: ScoreInput | None,
    failure_text: FailureTextInput,
    reward_guidance_scale: float,
    batch_size: int,
    no_failure_text: str,
) -> RewardInputs:
    """Validate the user's reward arguments (the same meaning as in `RewardEditPipeline`).

    `reward_scores=None` selects the null reward condition; it takes no failure text and no reward guidance.
    """
    reward_guidance_scale = validate_reward_guidance_scale(reward_guidance_scale)
    use_null_reward = reward_scores is None
    if use_null_reward:
        if failure_text is not None or reward_guidance_scale > 1.0:
            raise ValueError(
                "`reward_scores=None` selects the null reward condition: it takes no `failure_text` and no "
                "`reward_guidance_scale` > 1"
            )
        reward_scores = BEST_SCORES  # placeholder values, masked out by the null condition
    return RewardInputs(
        reward_scores=prepare_reward_scores(reward_scores, batch_size),
        failure_texts=resolve_failure_texts(failure_text, batch_size, no_failure_text),
        use_null_reward=use_null_reward,
        reward_guidance_scale=reward_guidance_scale,
    )


def encode_unique_texts(texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """`encode` each distinct text once (in first-seen order) and return one row per entry of `texts`."""
    unique_texts = list(dict.fromkeys(texts))
    embeddings = encode(unique_texts)
    if embeddings.shape[0] != len(unique_texts):
        raise RuntimeError(f"text encoding returned {embeddings.shape[0]} rows for {len(unique_texts)} texts")
    index = torch.tensor([unique_texts.index(text) for text in texts], device=embeddings.device)
    return embeddings.index_select(0, index)


def build_reward_condition(
    conditioner: RewardConditioner,
    inputs: RewardInputs,
    failure_text_embeds: torch.Tensor,
    num_images_per_prompt: int,
    device: torch.device,
) -> RewardCondition:
    """Run the conditioner once for the whole call: one row per generated image (prompt-major order, as the
    pipelines repeat prompt embeddings), plus the null condition when reward guidance is on."""
    scores = inputs.reward_scores.to(device).repeat_interleave(num_images_per_prompt, dim=0)
    text_embeds = failure_text_embeds.to(device).repeat_interleave(num_images_per_prompt, dim=0)
    rows = scores.shape[0]
    null_mask = torch.full((rows,), inputs.use_null_reward, dtype=torch.bool, device=device)
    embeddings = conditioner(scores, text_embeds, null_mask if inputs.use_null_reward else None)
    null_embeddings = None
    if inputs.reward_guidance_scale > 1.0:
        null_embeddings = conditioner(scores, text_embeds, torch.ones(rows, dtype=torch.bool, device=device))
    return RewardCondition(embeddings, null_embeddings, inputs.reward_guidance_scale)


# ---------------------------------------------------------------------------------------------- saving and loading
LOADER_SHIM_TEMPLATE = '''"""Loader shim for `diffusers.DiffusionPipeline.from_pretrained(<this folder or repo>, trust_remote_code=True)`.

It only imports the installed package (`pip install reward-edit-pipeline`); it downloads and runs no other code.
`reward_edit_pipeline.{class_name}.from_pretrained(...)` loads this folder without executing this file.
"""

from reward_edit_pipeline import {class_name}

__all__ = ["{class_name}"]
'''

COMPONENT_SHIM_TEMPLATE = '''"""Loader shim for `DiffusionPipeline.from_pretrained(<this repo>, trust_remote_code=True)`: diffusers needs a
`<component>/reward_edit_pipeline.py` for a component whose class comes from the installed `reward-edit-pipeline`
package. It holds no model code; the package's own `from_pretrained` never runs it.
"""

from reward_edit_pipeline import {class_name}  # noqa: F401
'''


def rewrite_saved_model_index(
    save_directory: str | os.PathLike, pipeline_class_name: str, loader_stem: str, package_classes: dict[str, type]
) -> None:
    """After `DiffusionPipeline.save_pretrained`: name the pipeline `[loader_stem, class]` and this package's
    components `["reward_edit_pipeline", class]`, and write the loader shims those entries need."""
    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path, encoding="utf-8") as handle:
        model_index = json.load(handle)
    model_index["_class_name"] = [loader_stem, pipeline_class_name]
    for name, entry in model_index.items():
        if isinstance(entry, list) and len(entry) == 2 and entry[1] in package_classes:
            model_index[name] = [PUBLIC_LIBRARY, entry[1]]
    with open(index_path, "w", encoding="utf-8") as handle:
        json.dump(model_index, handle, indent=2, sort_keys=True)
        handle.write("\n")
    with open(os.path.join(save_directory, f"{loader_stem}.py"), "w", encoding="utf-8") as handle:
        handle.write(LOADER_SHIM_TEMPLATE.format(class_name=pipeline_class_name))
    for name, entry in model_index.items():
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == PUBLIC_LIBRARY:
            with open(os.path.join(save_directory, name, f"{PUBLIC_LIBRARY}.py"), "w", encoding="utf-8") as handle:
                handle.write(COMPONENT_SHIM_TEMPLATE.format(class_name=entry[1]))


def read_saved_model_index(
    config: dict[str, Any], pipeline_class_name: str, loader_stem: str, package_classes: dict[str, type]
) -> dict[str, Any]:
    """Inverse of `rewrite_saved_model_index` for loading through the pipeline class itself (no remote code):
    the pipeline class name is read back plainly and each package component points at its defining module."""
    class_name = config.get("_class_name")
    if isinstance(class_name, (list, tuple)) and list(class_name) == [loader_stem, pipeline_class_name]:
        config["_class_name"] = pipeline_class_name
    for name, entry in config.items():
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == PUBLIC_LIBRARY and isinstance(entry[1], str):
            component_class = package_classes.get(entry[1])
            if component_class is not None:
                config[name] = [component_class.__module__, entry[1]]
    return config


# ---------------------------------------------------------------------------------------------- front ends
def run_edit(
    pipe: Any,
    instruction: str,
    image: Any,
    *,
    reward_scores: ScoreInput | None = BEST_SCORES,
    failure_text: FailureTextInput = None,
    num_inference_steps: int = 30,
    guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    reward_guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> Any:
    """One edit through any reward pipeline (the SD `RewardEditPipeline` or a DiT one), for the CLI and benchmark.

    SD (any pipeline without the class attribute `is_dit_reward_pipeline = True`): the arguments are passed as they
    are (prompt first). DiT editors (image first, then prompt): `guidance_scale` is their own
    guidance (`None` keeps the pipeline's default), `image_guidance_scale` does not exist for them (a value is
    logged and not used); the edit runs at the input size when the pipeline offers `input_size_call_kwargs` (FLUX.1
    Kontext: rounded down to a multiple of 16), and the edited PIL image is resized (Lanczos) back to the input size
    when it differs. Returns the pipeline's output object.
    """
    if not getattr(pipe, "is_dit_reward_pipeline", False):
        return pipe(
            instruction,
            image=image,
            reward_scores=reward_scores,
            failure_text=failure_text,
            num_inference_steps=num_inference_steps,
            guidance_scale=7.5 if guidance_scale is None else guidance_scale,
            image_guidance_scale=1.5 if image_guidance_scale is None else image_guidance_scale,
            reward_guidance_scale=reward_guidance_scale,
            generator=generator,
        )
    if image_guidance_scale is not None:
        logger.info(
            "%s has no image guidance; image_guidance_scale=%s is not used", type(pipe).__name__, image_guidance_scale
        )
    extra = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    if hasattr(pipe, "input_size_call_kwargs"):
        extra.update(pipe.input_size_call_kwargs(image))
    output = pipe(
        image=image,
        prompt=instruction,
        reward_scores=reward_scores,
        failure_text=failure_text,
        reward_guidance_scale=reward_guidance_scale,
        num_inference_steps=num_inference_steps,
        generator=generator,
        output_type="pil",
        **extra,
    )
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and output.images and output.images[0].size != size:
        import PIL.Image

        output.images = [edited.resize(size, PIL.Image.Resampling.LANCZOS) for edited in output.images]
    return output


# ---------------------------------------------------------------------------------------------- trained adapters
#: written by `reward-edit train --backbone ...` into `<output_dir>/reward_lora/` next to the LoRA
REWARD_ADAPTER_MODULES_FILE = "reward_modules.safetensors"
#: the LoRA of the transformer in diffusers' format (diffusers' default LoRA file name)
REWARD_ADAPTER_LORA_FILE = "pytorch_lora_weights.safetensors"
#: the safetensors header key under which diffusers stores a LoRA's PEFT settings (`diffusers.loaders.lora_base`),
#: each setting written `<component>.<setting>`; the reward adapters hold the transformer's only
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
LORA_COMPONENT = "transformer"
REWARD_ADAPTER_CONFIG_KEYS: tuple[str, ...] = (
    "failure_text_embed_dim",
    "reward_num_scores",
    "reward_sinusoid_dim",
    "reward_token_dim",
    "no_failure_text",
)


def read_reward_adapter_config(adapter_folder: str | os.PathLike) -> dict[str, Any]:
    """The reward settings (`REWARD_ADAPTER_CONFIG_KEYS`) recorded in a trainer's `reward_lora/config.json`."""
    config_path = os.path.join(os.fspath(adapter_folder), "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"`adapter_folder` {os.fspath(adapter_folder)!r} has no config.json (a trainer's reward_lora/)"
        )
    with open(config_path, encoding="utf-8") as handle:
        adapter_config = json.load(handle)
    return {name: adapter_config[name] for name in REWARD_ADAPTER_CONFIG_KEYS if name in adapter_config}


def lora_adapter_metadata(transformer: Any, adapter_name: str = "default") -> dict[str, Any]:
    """The PEFT settings (`LoraConfig.to_dict()`: rank, `lora_alpha`, patterns, targets, ...) of `transformer`'s LoRA
    `adapter_name`, JSON-ready: what a LoRA file must carry so that a loader applies it at the trained scale."""
    settings = transformer.peft_config[adapter_name].to_dict()
    return {name: sorted(value) if isinstance(value, set) else value for name, value in settings.items()}


def save_reward_adapter(folder: str | os.PathLike, pipeline_class: type, transformer: Any) -> None:
    """Write a reward adapter folder (`<output_dir>/reward_lora/` of `reward-edit train --backbone ...`): the
    transformer's LoRA, when it has one, in diffusers' format through `pipeline_class.save_lora_weights` with its
    settings (`lora_adapter_metadata`) in the file header; the reward modules (`reward_modules.safetensors`); the
    transformer's config (`config.json`: class and reward settings)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    if getattr(transformer, "peft_config", None):
        lora_state = {
            name: tensor.detach().contiguous() for name, tensor in get_peft_model_state_dict(transformer).items()
        }
        pipeline_class.save_lora_weights(
            folder,
            transformer_lora_layers=lora_state,
            transformer_lora_adapter_metadata=lora_adapter_metadata(transformer),
            weight_name=REWARD_ADAPTER_LORA_FILE,
            safe_serialization=True,
        )
    reward_state = {
        name: tensor.detach().contiguous()
        for name, tensor in transformer.state_dict().items()
        if name.startswith(("reward_conditioner.", "reward_attention."))
    }
    save_file(reward_state, os.path.join(folder, REWARD_ADAPTER_MODULES_FILE))
    transformer.save_config(folder)


def read_reward_adapter_lora_config(adapter_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The transformer LoRA's PEFT settings recorded in the header of `<adapter_folder>/pytorch_lora_weights.safetensors`
    (the keys `save_reward_adapter` writes), or `None` when the header records none: adapters written before the
    alpha was saved, which every loader applies with alpha = rank (scale 1)."""
    from safetensors import safe_open

    path = os.path.join(os.fspath(adapter_folder), REWARD_ADAPTER_LORA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`adapter_folder` {os.fspath(adapter_folder)!r} has no {REWARD_ADAPTER_LORA_FILE}")
    with safe_open(path, framework="pt") as handle:
        raw = (handle.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the {LORA_ADAPTER_METADATA_KEY!r} header entry is not JSON ({error})") from error
    prefix = LORA_COMPONENT + "."
    settings = {name[len(prefix) :]: value for name, value in packed.items() if name.startswith(prefix)}
    return settings or None


def _pattern_value(patterns: dict[str, Any], layer: str, default: Any) -> Any:
    """PEFT's per-layer override: the value of the first pattern (a regular expression) that matches the whole
    layer name or its trailing dotted part."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", layer):
            return value
    return default


def lora_layer_alphas(lora_config: dict[str, Any], layer_ranks: dict[str, int]) -> dict[str, float]:
    """Each LoRA layer's alpha in the `scale = alpha / rank` convention of kohya-style `<layer>.alpha` tensors
    (ComfyUI's LoRA loader), such that it reproduces PEFT's scale for that layer: `lora_alpha` (or its `alpha_pattern`
    entry) over the rank (its `rank_pattern` entry; the square root with `use_rslora`). `layer_ranks` maps layer names
    relative to the transformer to the rank of their LoRA tensors, which must agree with `lora_config`."""
    if lora_config.get("use_dora"):
        raise ValueError("DoRA adapters (`use_dora`) are not supported; the reward trainers write plain LoRA")
    alphas = {}
    for layer, tensor_rank in layer_ranks.items():
        rank = _pattern_value(lora_config.get("rank_pattern") or {}, layer, lora_config["r"])
        if rank != tensor_rank:
            raise ValueError(f"LoRA layer {layer!r} has rank {tensor_rank}, its recorded settings say {rank}")
        alpha = _pattern_value(lora_config.get("alpha_pattern") or {}, layer, lora_config["lora_alpha"])
        scale = alpha / math.sqrt(rank) if lora_config.get("use_rslora") else alpha / rank
        alphas[layer] = scale * tensor_rank
    return alphas


def load_reward_adapter_into(pipe: Any, adapter_folder: str | os.PathLike) -> None:
    """Load a trainer's `reward_lora/` onto a reward DiT pipeline: the reward modules (all keys required, settings
    must match the pipeline's transformer) and the LoRA (`pytorch_lora_weights.safetensors`, via the pipeline's
    `load_lora_weights`)."""
    from safetensors.torch import load_file

    folder = os.fspath(adapter_folder)
    weights_path = os.path.join(folder, REWARD_ADAPTER_MODULES_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"`adapter_folder` {folder!r} has no {REWARD_ADAPTER_MODULES_FILE} (a trainer's reward_lora/)"
        )
    adapter_config = read_reward_adapter_config(folder)
    transformer = pipe.transformer
    mismatched = {
        name: (value, transformer.config[name])
        for name, value in adapter_config.items()
        if name != "no_failure_text" and value != transformer.config[name]
    }
    if mismatched:
        raise ValueError(
            f"the reward adapter in {folder!r} was trained with other reward settings {{name: (adapter, pipeline)}}: "
            f"{mismatched}; wrap the base with from_base(pipe, **those settings) first"
        )
    state = load_file(weights_path)
    expected = {
        name for name in transformer.state_dict() if name.startswith(("reward_conditioner.", "reward_attention."))
    }
    if set(state) != expected:
        raise ValueError(
            f"{weights_path} does not match this transformer's reward modules: missing "
            f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
        )
    transformer.load_state_dict(state, strict=False)
    if os.path.isfile(os.path.join(folder, REWARD_ADAPTER_LORA_FILE)):
        if read_reward_adapter_lora_config(folder) is None:
            logger.warning(
                "%s records no LoRA settings (written before the trainer saved them): applied with alpha = rank",
                os.path.join(folder, REWARD_ADAPTER_LORA_FILE),
            )
        pipe.load_lora_weights(folder, weight_name=REWARD_ADAPTER_LORA_FILE)


def batch_size_from_prompt(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """The call's batch size: 1 for a string `prompt`, its length for a list of strings, else `prompt_embeds`' rows."""
    if prompt is not None:
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list) and prompt and all(isinstance(text, str) for text in prompt):
            return len(prompt)
        raise TypeError(f"`prompt` must be a non-empty string or a list of strings, got {prompt!r}")
    if prompt_embeds is not None:
        return prompt_embeds.shape[0]
    raise ValueError("provide `prompt` (the edit instruction) or `prompt_embeds`")


def validate_num_images_per_prompt(num_images_per_prompt: Any) -> int:
    """`num_images_per_prompt` must be a positive integer."""
    value = num_images_per_prompt
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {value!r}")
    return value


class RewardDiTPipelineMixin:
    """Loading, saving, adapter loading and reward-condition preparation of the reward DiT pipelines.

    Put it before the diffusers pipeline class in the bases (its `super()` calls reach that class). Subclasses set:

    - `loader_module_stem`: pinned name of the loader shim written into saved folders (`model_index.json`);
    - `package_classes`: this package's component classes that a saved `model_index.json` may name;
    - `reward_transformer_class`: the reward transformer a loaded folder must hold;
    - `stock_loader_name` / `stock_checkpoint_name`: the classmethod that wraps a stock checkpoint
      (`from_flux_kontext(path, reward_init, reward_config, **kwargs)`) and what that checkpoint is, for messages.

    and define `encode_failure_text(texts, device)`.
    """

    loader_module_stem: str
    package_classes: dict[str, type]
    reward_transformer_class: type
    stock_loader_name: str
    stock_checkpoint_name: str
    #: marks the DiT call convention (`image`, then `prompt`; no image guidance) for `reward_dit_common.run_edit`
    is_dit_reward_pipeline = True

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        config = super()._dict_from_json_file(json_file)
        return read_saved_model_index(config, cls.__name__, cls.loader_module_stem, cls.package_classes)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a saved folder of this pipeline or its Hub repo id (configs, safetensors and tokenizer files only).
        The loading dtype may be given as `dtype=` or `torch_dtype=`. A stock checkpoint (no reward modules) is
        refused with a pointer to the classmethod that wraps one. Weights are read from safetensors only unless
        `allow_pickle=True`."""
        normalize_dtype_kwarg(kwargs)
        apply_pickle_rule(pretrained_model_name_or_path, kwargs, f"{cls.__name__}.from_pretrained")
        if not os.path.isdir(pretrained_model_name_or_path):
            download_kwargs = {key: kwargs.pop(key) for key in DOWNLOAD_KWARGS if key in kwargs}
            pretrained_model_name_or_path = download_pipeline_files(
                str(pretrained_model_name_or_path), **download_kwargs
            )
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        expected = cls.reward_transformer_class.__name__
        if not isinstance(pipe.transformer, cls.reward_transformer_class):
            raise ValueError(
                f"{pretrained_model_name_or_path!s} holds a plain {type(pipe.transformer).__name__}, not a "
                f"{expected}. Use {cls.__name__}.{cls.stock_loader_name}(...) to wrap a "
                f"{cls.stock_checkpoint_name} checkpoint with new reward modules."
            )
        return pipe

    def load_reward_adapter(self, adapter_folder: str | os.PathLike) -> None:
        """Load what `reward-edit train` writes to `<output_dir>/reward_lora/` for this backbone onto this
        (base-wrapped) pipeline: the reward modules (`reward_modules.safetensors`, all keys required, same reward
        settings) and the LoRA (`pytorch_lora_weights.safetensors`, diffusers' format, via `load_lora_weights`)."""
        load_reward_adapter_into(self, adapter_folder)

    @classmethod
    def from_reward_adapter(
        cls, pretrained_model_name_or_path: str | os.PathLike, adapter_folder: str | os.PathLike, **kwargs: Any
    ):
        """Wrap a stock checkpoint with the reward settings of `adapter_folder` and load the adapter
        (`load_reward_adapter`): the small-download alternative to a full trained pipeline folder."""
        reward_config = read_reward_adapter_config(adapter_folder)
        from_stock = getattr(cls, cls.stock_loader_name)
        pipe = from_stock(pretrained_model_name_or_path, reward_config=reward_config, **kwargs)
        pipe.load_reward_adapter(adapter_folder)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs: Any):
        """Save as safetensors, loadable by `<this class>.from_pretrained(folder)` and by
        `diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (through one-line loader
        modules written into the folder, which import this installed package)."""
        if not safe_serialization:
            raise ValueError(
                f"{type(self).__name__} saves safetensors only; `safe_serialization=False` is not supported"
            )
        if kwargs.get("push_to_hub"):
            raise ValueError("use `reward-edit push-model` (reward_edit_pipeline.hub) to upload a saved folder")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        rewrite_saved_model_index(save_directory, type(self).__name__, self.loader_module_stem, self.package_classes)

    def prepare_reward_condition(
        self,
        reward_scores: ScoreInput | None,
        failure_text: FailureTextInput,
        reward_guidance_scale: float,
        batch_size: int,
        num_images_per_prompt: int,
        device: torch.device | None = None,
    ) -> RewardCondition:
        """Validate the reward arguments and run the transformer's conditioner once for the whole call."""
        device = device or self._execution_device
        inputs = prepare_reward_inputs(
            reward_scores, failure_text, reward_guidance_scale, batch_size, self.transformer.config.no_failure_text
        )
        failure_text_embeds = self.encode_failure_text(inputs.failure_texts, device)
        conditioner = self.transformer.reward_conditioner
        failure_text_embeds = failure_text_embeds.to(next(conditioner.parameters()).dtype)
        return build_reward_condition(conditioner, inputs, failure_text_embeds, num_images_per_prompt, device)
