"""`reward-edit push-model` for FLUX.1 Kontext reward folders (full pipeline and LoRA adapter) on the loopback Hub."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hub_server import point_clients_at, running_hub
from PIL import Image
from reward_edit_pipeline.hub.push_model import push_model
from safetensors.torch import save_file

from reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline
from reward_edit_pipeline.testing_dit import dummy_flux_kontext_call_kwargs, make_dummy_flux_kontext_pipeline

TOKEN = "hf_test_write_token"
REPO = "tester/reward-flux-tiny"


def edit(pipe) -> np.ndarray:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=image, prompt="turn it blue", reward_scores=(4, 5, 3), generator=torch.Generator().manual_seed(0),
        **dummy_flux_kontext_call_kwargs(),
    ).images  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny RewardFluxKontextPipeline folder, a reward_lora/-style adapter folder, and the reference edit."""
    root = tmp_path_factory.mktemp("flux")
    pipe = make_dummy_flux_kontext_pipeline(seed=2)
    pipe.save_pretrained(root / "full")
    adapter = root / "reward_lora"
    adapter.mkdir()
    pipe.transformer.save_config(adapter)
    reward_state = {
        name: tensor.contiguous()
        for name, tensor in pipe.transformer.state_dict().items()
        if name.startswith(("reward_conditioner.", "reward_attention."))
    }
    save_file(reward_state, adapter / "reward_modules.safetensors")
    return root, edit(pipe)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    with running_hub() as state:
        point_clients_at(state.endpoint, monkeypatch, tmp_path / "hf-cache")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state


def _card_metadata(staged) -> dict:
    text = (staged / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---")[1]), text


def test_full_flux_folder_card_names_the_flux_base_and_licence(saved, tmp_path):
    root, _ = saved
    staged = push_model(root / "full", REPO, dry_run=True, dry_run_dir=tmp_path / "staged").staged_folder
    metadata, text = _card_metadata(staged)
    assert metadata["base_model"] == "black-forest-labs/FLUX.1-Kontext-dev"
    assert metadata["base_model_relation"] == "finetune"
    assert metadata["license"] == "other" and metadata["license_name"] == "flux-1-dev-non-commercial-license"
    assert "flux-kontext" in metadata["tags"] and "lora" not in metadata["tags"]
    assert "RewardFluxKontextPipeline.from_pretrained" in text and "the full pipeline" in text
    assert (staged / "pipeline_reward_flux_kontext.py").is_file()
    assert (staged / "transformer" / "reward_edit_pipeline.py").is_file()


def test_lora_adapter_folder_card_is_an_adapter_of_the_base(saved, tmp_path):
    root, _ = saved
    staged = push_model(
        root / "reward_lora", REPO, dry_run=True, dry_run_dir=tmp_path / "staged", base_model="me/my-kontext"
    ).staged_folder
    metadata, text = _card_metadata(staged)
    assert metadata["base_model"] == "me/my-kontext" and metadata["base_model_relation"] == "adapter"
    assert "lora" in metadata["tags"]
    assert "from_reward_adapter" in text
    assert sorted(path.name for path in staged.iterdir()) == ["README.md", "config.json", "reward_modules.safetensors"]


def test_pushed_flux_folder_loads_from_the_repo_id_and_edits_identically(hub, saved):
    root, expected = saved
    push_model(root / "full", REPO)
    pipe = RewardFluxKontextPipeline.from_pretrained(REPO)
    np.testing.assert_array_equal(edit(pipe), expected)
