"""`reward-edit push-model` cards for Qwen-Image-Edit reward folders (full pipeline and LoRA adapter), staged only."""

from __future__ import annotations

import pytest
import yaml
from reward_edit_pipeline.hub.push_model import push_model
from safetensors.torch import save_file

from reward_edit_pipeline.testing_qwenimage import make_dummy_qwen_edit_pipeline

REPO = "tester/reward-qwen-tiny"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Saved tiny Edit and Plus (2511 layout) reward folders and a reward_lora/-style adapter folder of each."""
    root = tmp_path_factory.mktemp("qwen")
    for name, plus in (("edit", False), ("plus", True)):
        pipe = make_dummy_qwen_edit_pipeline(plus=plus, seed=2)
        pipe.save_pretrained(root / name)
        adapter = root / f"{name}_lora"
        adapter.mkdir()
        pipe.transformer.save_config(adapter)
        state = {
            key: tensor.contiguous()
            for key, tensor in pipe.transformer.state_dict().items()
            if key.startswith(("reward_conditioner.", "reward_attention."))
        }
        save_file(state, adapter / "reward_modules.safetensors")
    return root


def _card(staged) -> tuple[dict, str]:
    text = (staged / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---")[1]), text


@pytest.mark.parametrize(
    ("folder", "base_model", "pipeline_class", "relation"),
    [
        ("edit", "Qwen/Qwen-Image-Edit", "RewardQwenImageEditPipeline", "finetune"),
        ("plus", "Qwen/Qwen-Image-Edit-2511", "RewardQwenImageEditPlusPipeline", "finetune"),
        ("edit_lora", "Qwen/Qwen-Image-Edit", "RewardQwenImageEditPipeline", "adapter"),
        ("plus_lora", "Qwen/Qwen-Image-Edit-2511", "RewardQwenImageEditPlusPipeline", "adapter"),
    ],
)
def test_qwen_folder_cards_name_the_qwen_base_and_licence(
    saved, tmp_path, folder, base_model, pipeline_class, relation
):
    staged = push_model(saved / folder, REPO, dry_run=True, dry_run_dir=tmp_path / "staged").staged_folder
    metadata, text = _card(staged)
    assert metadata["base_model"] == base_model and metadata["base_model_relation"] == relation
    assert metadata["license"] == "apache-2.0"
    assert pipeline_class in text
    if relation == "finetune":
        stem = "pipeline_reward_qwenimage_edit_plus" if "Plus" in pipeline_class else "pipeline_reward_qwenimage_edit"
        assert (staged / f"{stem}.py").is_file() and (staged / "transformer" / "reward_edit_pipeline.py").is_file()
        assert f"{pipeline_class}.from_pretrained" in text
    else:
        assert "lora" in metadata["tags"] and "from_reward_adapter" in text
