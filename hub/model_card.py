"""Model cards for reward-edit pipelines: YAML metadata the Hub indexes, a usage snippet, training and evaluation data."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_BASE_MODEL = "timbrooks/instruct-pix2pix"
DEFAULT_DATASETS: tuple[str, ...] = ("Gstar666/RewardEdit",)
DEFAULT_LICENSE = "creativeml-openrail-m"  # the Stable Diffusion 1.5 licence that InstructPix2Pix weights inherit
DEFAULT_TAGS: tuple[str, ...] = (
    "diffusers",
    "image-editing",
    "instruct-pix2pix",
    "reward-edit-pipeline",
    "multi-reward",
)
# Names looked up in a pipeline folder when no file is given explicitly.
TRAINING_ARGS_FILENAMES: tuple[str, ...] = ("training_args.json", "train_args.json", "args.json")
EVAL_RESULTS_FILENAMES: tuple[str, ...] = ("eval_results.json", "evaluation.json")
# `reward-edit train` writes this summary next to the pipeline; its path-free entries describe the run.
TRAIN_SUMMARY_FILENAME = "train_summary.json"
TRAIN_SUMMARY_KEYS: tuple[str, ...] = (
    "stage",
    "optimization_steps",
    "max_train_steps",
    "epochs",
    "processes",
    "total_batch_size",
    "examples",
    "ema",
    "final_loss",
)

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

An instruction-based image editing model conditioned on **multiple rewards**, following *Multi-Reward as Condition
for Instruction-based Image Editing* (Gu et al., ICLR 2025, [arXiv:2411.04713](https://arxiv.org/abs/2411.04713)).
It is an InstructPix2Pix UNet ({{ base_model_text }}) extended with reward conditions: three scores in [0, 5]
(instruction **following**, detail **preserving**, generation **quality**) and a failure text. At inference the
conditions ask for the best edit: scores (5, 5, 5) and the failure text `{{ no_failure_text }}`.

Packaged with [reward-edit-pipeline](https://pypi.org/project/reward-edit-pipeline/) (`pip install reward-edit-pipeline`).

## Usage

```python
{{ usage_snippet }}
```

With `diffusers.DiffusionPipeline` (`trust_remote_code=True` runs the repository's one-line `{{ shim_filename }}`,
which only imports the installed `reward_edit_pipeline` package):

```python
{{ diffusers_snippet }}
```

Reward conditions: `reward_scores` is `(following, preserving, quality)`, each a number in [0, 5];
`failure_text=None` uses the model's own "no failure" text, a 3-tuple gives one text per perspective.
{% if training_table %}
## Training

{{ training_table }}
{% endif %}{% if eval_table %}
## Evaluation

{{ eval_table }}
{% endif %}
## Citation

```bibtex
@inproceedings{gu2025multireward,
  title     = {Multi-Reward as Condition for Instruction-based Image Editing},
  author    = {Gu, Xin and others},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}
```
"""


def usage_snippet(repo_id: str, revision: str | None = None) -> str:
    """Python that loads `repo_id` with the package's pipeline class and edits one image (GPU or CPU)."""
    revision_arg = f', revision="{revision}"' if revision and revision != "main" else ""
    return "\n".join(
        [
            "import torch",
            "from diffusers.utils import load_image",
            "from reward_edit_pipeline import RewardEditPipeline",
            "",
            'device = "cuda" if torch.cuda.is_available() else "cpu"',
            'dtype = torch.float16 if device == "cuda" else torch.float32',
            f'pipe = RewardEditPipeline.from_pretrained("{repo_id}"{revision_arg}, dtype=dtype).to(device)',
            'image = load_image("input.jpg")  # your photo (a path or an URL)',
            "edited = pipe(",
            '    "make it a watercolor painting",',
            "    image=image,",
            "    reward_scores=(5, 5, 5),  # following, preserving, quality: ask for the best edit",
            "    num_inference_steps=30,",
            "    guidance_scale=7.5,",
            "    image_guidance_scale=1.5,",
            "    generator=torch.Generator(device).manual_seed(42),",
            ").images[0]",
            'edited.save("edited.png")',
        ]
    )


def diffusers_snippet(repo_id: str, revision: str | None = None) -> str:
    """The same with `diffusers.DiffusionPipeline` (the repo's loader module imports the installed package)."""
    revision_arg = f', revision="{revision}"' if revision and revision != "main" else ""
    return "\n".join(
        [
            "from diffusers import DiffusionPipeline",
            "from diffusers.utils import load_image",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{repo_id}"{revision_arg}, trust_remote_code=True)',
            'edited = pipe("make it a watercolor painting", image=load_image("input.jpg"), num_inference_steps=30).images[0]',
        ]
    )


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def training_table(training_args: Mapping[str, Any]) -> str:
    """A two-column Markdown table of training arguments, in sorted key order (stable across pushes)."""
    lines = ["| argument | value |", "| --- | --- |"]
    for key in sorted(training_args):
        lines.append(f"| `{key}` | {_format_value(training_args[key])} |")
    return "\n".join(lines)


def evaluation_table(eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of evaluation results: a flat ``{metric: value}`` mapping or a list of row mappings."""
    if isinstance(eval_results, Mapping):
        if "rows" in eval_results and isinstance(eval_results["rows"], list):
            return evaluation_table(eval_results["rows"])
        lines = ["| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {_format_value(value)} |" for key, value in eval_results.items()]
        return "\n".join(lines)
    rows = list(eval_results)
    if not rows or not all(isinstance(row, Mapping) for row in rows):
        raise ValueError("`eval_results` must be a mapping of metric -> value or a non-empty list of mappings (rows)")
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format_value(row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def read_json_file(path: Path, argument: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"`{argument}` file {path} does not exist") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"`{argument}` file {path} is not valid JSON: {err}") from err


def find_first(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def build_model_card(
    repo_id: str,
    *,
    base_model: str | None = DEFAULT_BASE_MODEL,
    datasets: Sequence[str] = DEFAULT_DATASETS,
    license: str = DEFAULT_LICENSE,  # noqa: A002 - the Hub metadata field is called license
    tags: Sequence[str] = (),
    training_args: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    no_failure_text: str = "None; None; None",
    revision: str | None = None,
    shim_filename: str = "pipeline_reward_edit.py",
):
    """Build the `huggingface_hub.ModelCard` of a reward-edit pipeline repo (deterministic: same inputs, same text)."""
    from huggingface_hub import ModelCard, ModelCardData

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`repo_id` must look like 'namespace/name', got {repo_id!r}")
    all_tags = list(dict.fromkeys([*DEFAULT_TAGS, *tags]))
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        base_model=base_model or None,
        datasets=list(datasets) or None,
        license=license,
        tags=all_tags,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        title=repo_id.split("/")[1],
        base_model_text=f"fine-tuned from [`{base_model}`](https://huggingface.co/{base_model})" if base_model else "",
        no_failure_text=no_failure_text,
        usage_snippet=usage_snippet(repo_id, revision),
        diffusers_snippet=diffusers_snippet(repo_id, revision),
        shim_filename=shim_filename,
        training_table=training_table(training_args) if training_args else "",
        eval_table=evaluation_table(eval_results) if eval_results else "",
    )
