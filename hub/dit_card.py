"""`reward-edit push-model` for the DiT editors (docs/dit.md): what kind of folder it is and its model card.

Two kinds per backbone:

- ``full``: a saved reward pipeline folder (e.g. `RewardFluxKontextPipeline.save_pretrained`, or the trainer's
  `--output_dir` with the LoRA merged); loads with `from_pretrained` / `DiffusionPipeline.from_pretrained(...,
  trust_remote_code=True)`.
- ``lora``: the trainer's ``reward_lora/`` folder (LoRA in diffusers' format + ``reward_modules.safetensors`` +
  the transformer config); loads onto the base checkpoint with `from_reward_adapter`.

`push_model.stage_model_folder` hands such folders to `stage_dit_folder`; everything else stays as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import DEFAULT_IGNORE_PATTERNS, copy_files, list_upload_files, prepare_staging_folder, refuse_pickle_files
from .model_card import DEFAULT_BASE_MODEL, DEFAULT_LICENSE, evaluation_table, read_json_file, training_table


@dataclass(frozen=True)
class DitBackboneCard:
    """Hub facts of one DiT backbone."""

    name: str
    pipeline_class: str
    transformer_class: str
    loader_stem: str
    base_model: str
    license: str
    license_name: str | None
    license_link: str | None
    description: str


DIT_CARDS: dict[str, DitBackboneCard] = {
    "flux-kontext": DitBackboneCard(
        name="flux-kontext",
        pipeline_class="RewardFluxKontextPipeline",
        transformer_class="RewardFluxTransformer2DModel",
        loader_stem="pipeline_reward_flux_kontext",
        base_model="black-forest-labs/FLUX.1-Kontext-dev",
        license="other",
        license_name="flux-1-dev-non-commercial-license",
        license_link="https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev/blob/main/LICENSE.md",
        description="the FLUX.1 Kontext [dev] transformer",
    ),
    # Qwen-Image-Edit (dit-qwen): two pipeline classes share one transformer class; a reward_lora/ folder is matched
    # to the Plus card when its transformer config has `zero_cond_t` (the -2511 layout), else to the Edit card.
    "qwen-image-edit": DitBackboneCard(
        name="qwen-image-edit",
        pipeline_class="RewardQwenImageEditPipeline",
        transformer_class="RewardQwenImageTransformer2DModel",
        loader_stem="pipeline_reward_qwenimage_edit",
        base_model="Qwen/Qwen-Image-Edit",
        license="apache-2.0",
        license_name=None,
        license_link=None,
        description="the Qwen-Image-Edit transformer",
    ),
    "qwen-image-edit-plus": DitBackboneCard(
        name="qwen-image-edit-plus",
        pipeline_class="RewardQwenImageEditPlusPipeline",
        transformer_class="RewardQwenImageTransformer2DModel",
        loader_stem="pipeline_reward_qwenimage_edit_plus",
        base_model="Qwen/Qwen-Image-Edit-2511",
        license="apache-2.0",
        license_name=None,
        license_link=None,
        description="the Qwen-Image-Edit-2509 / -2511 transformer",
    ),
}

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

An instruction-based image editing model conditioned on **multiple rewards**, following *Multi-Reward as Condition
for Instruction-based Image Editing* (Gu et al., ICLR 2025, [arXiv:2411.04713](https://arxiv.org/abs/2411.04713)),
on {{ description }} ({{ base_model_text }}). Three scores in [0, 5] (instruction **following**, detail
**preserving**, generation **quality**) and a failure text enter through a reward conditioner (added to the timestep
modulation) and a gated reward attention; at inference the conditions ask for the best edit: scores (5, 5, 5) and
the failure text `{{ no_failure_text }}`.

**This repository holds {{ kind_text }}.**

Packaged with [reward-edit-pipeline](https://pypi.org/project/reward-edit-pipeline/) (`pip install reward-edit-pipeline`).
The base model's licence applies to these weights.

## Usage

```python
{{ usage_snippet }}
```
{% if training_table %}
## Training

{{ training_table }}
{% endif %}{% if eval_table %}
## Evaluation

{{ eval_table }}
{% endif %}"""


def dit_folder_kind(folder: str | Path) -> tuple[DitBackboneCard, str] | None:
    """`(backbone, "full" | "lora")` for a DiT reward folder, `None` for anything else."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if index_path.is_file():
        class_name = json.loads(index_path.read_text(encoding="utf-8")).get("_class_name")
        class_name = class_name[-1] if isinstance(class_name, list) and class_name else class_name
        for card in DIT_CARDS.values():
            if class_name == card.pipeline_class:
                return card, "full"
        return None
    config_path = folder / "config.json"
    if config_path.is_file() and (folder / "reward_modules.safetensors").is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        matches = [card for card in DIT_CARDS.values() if config.get("_class_name") == card.transformer_class]
        if len(matches) > 1:  # Qwen-Image-Edit: the -2511 layout (zero_cond_t) goes with the Plus pipeline
            plus = [card for card in matches if card.name.endswith("-plus")]
            matches = plus if config.get("zero_cond_t") and plus else [card for card in matches if card not in plus]
        if matches:
            return matches[0], "lora"
    return None


def _usage(card: DitBackboneCard, kind: str, repo_id: str, base_model: str) -> str:
    if kind == "full":
        load = f'pipe = {card.pipeline_class}.from_pretrained("{repo_id}", dtype=torch.bfloat16).to("cuda")'
    else:
        load = (
            f'pipe = {card.pipeline_class}.from_reward_adapter("{base_model}", "<local copy of {repo_id}>", '
            'dtype=torch.bfloat16).to("cuda")'
        )
    return "\n".join(
        [
            "import torch",
            "from diffusers.utils import load_image",
            f"from reward_edit_pipeline import {card.pipeline_class}",
            "",
            load,
            'image = load_image("input.jpg")',
            'edited = pipe(image=image, prompt="make it a watercolor painting",',
            "              reward_scores=(5, 5, 5)).images[0]  # following, preserving, quality",
            'edited.save("edited.png")',
        ]
    )


def build_dit_model_card(
    repo_id: str,
    card: DitBackboneCard,
    kind: str,
    *,
    base_model: str | None,
    datasets: Sequence[str],
    license: str,  # noqa: A002 - the Hub metadata field is called license
    tags: Sequence[str] = (),
    training_args: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    no_failure_text: str = "None; None; None",
):
    """The `huggingface_hub.ModelCard` of a DiT reward repo (deterministic). The SD defaults of `push-model`
    (`--base-model timbrooks/instruct-pix2pix`, `--license creativeml-openrail-m`) are replaced by the backbone's."""
    from huggingface_hub import ModelCard, ModelCardData

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`repo_id` must look like 'namespace/name', got {repo_id!r}")
    if kind not in ("full", "lora"):
        raise ValueError(f"`kind` must be 'full' or 'lora', got {kind!r}")
    base_model = card.base_model if base_model in (None, DEFAULT_BASE_MODEL) else base_model
    license_fields: dict[str, Any] = {"license": license}
    if license == DEFAULT_LICENSE:
        license_fields = {"license": card.license}
        if card.license_name:
            license_fields.update(license_name=card.license_name, license_link=card.license_link)
    kind_tags = ["lora"] if kind == "lora" else []
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        base_model=base_model,
        base_model_relation="adapter" if kind == "lora" else "finetune",
        datasets=list(datasets) or None,
        tags=list(
            dict.fromkeys(
                ["diffusers", "image-editing", "reward-edit-pipeline", "multi-reward", card.name, *kind_tags, *tags]
            )
        ),
        **license_fields,
    )
    kind_text = (
        "the full pipeline (LoRA merged into the base weights, reward modules included)"
        if kind == "full"
        else f"an adapter: a LoRA (diffusers format) and the reward modules, to load onto `{base_model}`"
    )
    return ModelCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        title=repo_id.split("/")[1],
        description=card.description,
        base_model_text=f"base: [`{base_model}`](https://huggingface.co/{base_model})",
        no_failure_text=no_failure_text,
        kind_text=kind_text,
        usage_snippet=_usage(card, kind, repo_id, base_model),
        training_table=training_table(training_args) if training_args else "",
        eval_table=evaluation_table(eval_results) if eval_results else "",
    )


def stage_dit_folder(
    folder: str | Path,
    repo_id: str,
    staging_dir: str | Path,
    *,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,  # noqa: A002
    tags: Sequence[str] = (),
    training_args: Mapping[str, Any] | None = None,
    eval_results: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
    overwrite: bool = False,
    **_: Any,
) -> Path:
    """Write into `staging_dir` what `push_model` uploads for a DiT reward folder: its files and a ``README.md``.
    Pickle files are refused; a full folder must carry its loader shim."""
    folder = Path(folder)
    found = dit_folder_kind(folder)
    if found is None:
        raise ValueError(f"`folder` {folder} is not a DiT reward pipeline folder nor a trainer's reward_lora/ folder")
    card, kind = found
    files = [rel for rel in list_upload_files(folder, ignore_patterns) if rel != "README.md"]
    refuse_pickle_files(folder, files)
    if not any(rel.endswith(".safetensors") for rel in files):
        raise ValueError(f"`folder` {folder} contains no .safetensors weights")
    if kind == "full" and f"{card.loader_stem}.py" not in files:
        raise FileNotFoundError(
            f"`folder` {folder} lacks the loader module {card.loader_stem}.py that {card.pipeline_class}.save_pretrained "
            "writes; re-save the pipeline"
        )
    config_path = folder / ("transformer/config.json" if kind == "full" else "config.json")
    no_failure_text = "None; None; None"
    if config_path.is_file():
        no_failure_text = json.loads(config_path.read_text(encoding="utf-8")).get("no_failure_text", no_failure_text)
    if isinstance(eval_results, (str, Path)):
        eval_results = read_json_file(Path(eval_results), "eval_results")
    model_card = build_dit_model_card(
        repo_id,
        card,
        kind,
        base_model=base_model,
        datasets=datasets,
        license=license,
        tags=tags,
        training_args=training_args,
        eval_results=eval_results,
        no_failure_text=no_failure_text,
    )
    staged = prepare_staging_folder(Path(staging_dir), overwrite=overwrite)
    copy_files(folder, files, staged)
    (staged / "README.md").write_text(str(model_card), encoding="utf-8")
    return staged
