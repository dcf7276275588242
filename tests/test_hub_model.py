"""Model publishing and pulling through the loopback Hub: card, pickle refusal, dry run, round trips, official pull."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from reward_edit_pipeline.hub._common import PickleFileError
from reward_edit_pipeline.hub.push_model import push_model

REPO = "tester/reward-edit-tiny"


def edit(pipe) -> np.ndarray:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    return pipe(
        "turn it blue",
        image,
        reward_scores=(4, 5, 3),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A saved tiny RewardEditPipeline folder and the output of the pipeline loaded from it."""
    from reward_edit_pipeline import RewardEditPipeline
    from reward_edit_pipeline.testing import save_dummy_pipeline

    folder = save_dummy_pipeline(tmp_path_factory.mktemp("pipe") / "pipeline", seed=3)
    (folder / "training_args.json").write_text(json.dumps({"learning_rate": 5e-5, "max_train_steps": 10000}))
    (folder / "eval_results.json").write_text(json.dumps({"following_accuracy": 0.91, "preserving_score": 4.2}))
    local = RewardEditPipeline.from_pretrained(folder)
    local.set_progress_bar_config(disable=True)
    return folder, edit(local)


def test_pull_downloads_a_pushed_model_that_loads_and_edits_identically(hub, saved_pipeline):
    from reward_edit_pipeline.hub.pull import download_model

    from reward_edit_pipeline import RewardEditPipeline

    folder, expected = saved_pipeline
    result = push_model(folder, REPO)
    assert result.created_commit
    assert hub.count("lfs-upload") >= 3  # unet, vae, text encoder weights travel as LFS objects
    local = download_model(REPO)
    assert not list(local.rglob("*.py"))  # the loader shims are not needed, so not downloaded
    pipe = RewardEditPipeline.from_pretrained(local)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(pipe), expected)


def test_pull_model_cli_loads_a_pushed_model_and_saves_it(hub, saved_pipeline, tmp_path, capsys):
    from reward_edit_pipeline import RewardEditPipeline
    from reward_edit_pipeline.cli import main

    folder, expected = saved_pipeline
    push_model(folder, REPO)
    assert main(["pull-model", REPO, "--save-to", str(tmp_path / "pulled")]) == 0
    assert "loaded tester/reward-edit-tiny as a RewardEditPipeline" in capsys.readouterr().out
    pipe = RewardEditPipeline.from_pretrained(tmp_path / "pulled")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(pipe), expected)


def test_pushed_model_loads_with_load_pipeline_from_repo_id(hub, saved_pipeline):
    from reward_edit_pipeline import load_pipeline

    folder, expected = saved_pipeline
    push_model(folder, REPO)
    pipe = load_pipeline(REPO, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(pipe), expected)


def test_pushed_model_loads_with_reward_edit_pipeline_from_repo_id_and_edits_identically(hub, saved_pipeline):
    from reward_edit_pipeline import RewardEditPipeline

    folder, expected = saved_pipeline
    push_model(folder, REPO)
    pipe = RewardEditPipeline.from_pretrained(REPO)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(pipe), expected)


def test_pushed_model_loads_with_diffusion_pipeline_and_trust_remote_code(hub, saved_pipeline):
    from diffusers import DiffusionPipeline

    from reward_edit_pipeline import RewardEditPipeline

    folder, expected = saved_pipeline
    push_model(folder, REPO)
    pipe = DiffusionPipeline.from_pretrained(REPO, trust_remote_code=True)
    assert isinstance(pipe, RewardEditPipeline)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(pipe), expected)


def test_model_card_metadata_snippets_training_and_eval_tables(hub, hub_token, saved_pipeline, tmp_path):
    from huggingface_hub import ModelCard

    folder, _ = saved_pipeline
    staged = push_model(folder, REPO, dry_run=True, dry_run_dir=tmp_path / "staged", tags=["my-run"]).staged_folder
    card = ModelCard.load(staged / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "image-to-image"
    assert data["base_model"] == "timbrooks/instruct-pix2pix"
    assert data["datasets"] == ["Gstar666/RewardEdit"] and data["license"] == "creativeml-openrail-m"
    assert {"reward-edit-pipeline", "my-run"} <= set(data["tags"])
    assert f'RewardEditPipeline.from_pretrained("{REPO}"' in card.text
    assert f'DiffusionPipeline.from_pretrained("{REPO}", trust_remote_code=True)' in card.text
    assert "| `learning_rate` | 5e-05 |" in card.text and "| `max_train_steps` | 10000 |" in card.text
    assert "| following_accuracy | 0.91 |" in card.text
    assert hub_token not in (staged / "README.md").read_text()


def _run_card_block(index: int, tmp_path, monkeypatch) -> dict:
    """Execute the card's `index`-th Python block as a user would (in a folder holding input.jpg)."""
    from huggingface_hub import ModelCard

    blocks = re.findall(r"```python\n(.*?)```", ModelCard.load(REPO).text, flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32), (200, 30, 30)).save("input.jpg")
    namespace: dict = {}
    exec(compile(blocks[index].replace("num_inference_steps=30", "num_inference_steps=2"), "card", "exec"), namespace)
    return namespace


def test_model_card_diffusion_pipeline_snippet_really_runs(hub, saved_pipeline, tmp_path, monkeypatch):
    folder, _ = saved_pipeline
    push_model(folder, REPO)
    namespace = _run_card_block(1, tmp_path, monkeypatch)
    assert namespace["edited"].size == (32, 32)


def test_model_card_reward_edit_pipeline_snippet_really_runs(hub, saved_pipeline, tmp_path, monkeypatch):
    folder, _ = saved_pipeline
    push_model(folder, REPO)
    namespace = _run_card_block(0, tmp_path, monkeypatch)
    assert namespace["edited"].size == (32, 32) and (tmp_path / "edited.png").is_file()


def test_card_falls_back_to_the_path_free_train_summary(saved_pipeline, tmp_path):
    import shutil

    folder, _ = saved_pipeline
    copy = tmp_path / "trained"
    shutil.copytree(folder, copy)
    (copy / "training_args.json").unlink()
    summary = {"stage": 2, "optimization_steps": 40, "output_dir": "/home/me/secret-run", "final_loss": 0.125}
    (copy / "train_summary.json").write_text(json.dumps(summary))
    staged = push_model(copy, REPO, dry_run=True, dry_run_dir=tmp_path / "staged").staged_folder
    card = (staged / "README.md").read_text()
    assert "| `optimization_steps` | 40 |" in card and "| `final_loss` | 0.125 |" in card
    assert "secret-run" not in card


def test_push_model_cli_on_a_folder_without_training_files_writes_a_card_without_training(
    saved_pipeline, tmp_path, capsys
):
    import shutil

    from reward_edit_pipeline.cli import main

    folder, _ = saved_pipeline
    copy = tmp_path / "plain"
    shutil.copytree(folder, copy)
    (copy / "training_args.json").unlink()
    assert not (copy / "train_summary.json").exists()
    staged = tmp_path / "staged"
    assert main(["push-model", str(copy), REPO, "--dry-run", str(staged)]) == 0
    assert f"dry run: the upload folder is {staged}" in capsys.readouterr().out
    card = (staged / "README.md").read_text()
    assert "## Training" not in card and "## Usage" in card


def test_model_card_loads_with_dtype_not_the_deprecated_torch_dtype(saved_pipeline, tmp_path):
    folder, _ = saved_pipeline
    card = (
        push_model(folder, REPO, dry_run=True, dry_run_dir=tmp_path / "staged").staged_folder / "README.md"
    ).read_text()
    assert "dtype=dtype" in card and "torch_dtype" not in card


def test_dry_run_folder_is_exactly_what_a_push_uploads(hub, saved_pipeline, tmp_path):
    folder, _ = saved_pipeline
    staged = push_model(folder, REPO, dry_run=True, dry_run_dir=tmp_path / "staged").staged_folder
    assert hub.requests == []  # a dry run needs no network
    push_model(folder, REPO)
    remote = hub.repos[("model", REPO)].head("main").files
    staged_files = {p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    assert set(remote) - {".gitattributes"} == set(staged_files)
    for path, content in staged_files.items():
        assert hub.file_bytes(REPO, path) == content, path


def test_unchanged_model_repush_makes_no_commit_and_a_changed_card_makes_one(hub, saved_pipeline):
    folder, _ = saved_pipeline
    first = push_model(folder, REPO)
    uploads = hub.count("lfs-upload")
    again = push_model(folder, REPO)
    assert not again.created_commit and again.commit_oid == first.commit_oid
    assert hub.count("lfs-upload") == uploads and hub.count("commit") == 1
    changed = push_model(folder, REPO, license="mit")
    assert changed.created_commit and hub.count("lfs-upload") == uploads


def test_push_to_a_new_branch_keeps_main_untouched(hub, saved_pipeline):
    folder, _ = saved_pipeline
    main_commit = push_model(folder, REPO).commit_oid
    branch = push_model(folder, REPO, revision="experiment", license="mit")
    assert branch.created_commit and branch.revision == "experiment"
    assert hub.repos[("model", REPO)].branches["main"] == main_commit
    assert 'revision="experiment"' in hub.file_bytes(REPO, "README.md", revision="experiment").decode()
    from reward_edit_pipeline.hub.pull import download_model

    pulled = download_model(REPO, revision="experiment", allow_patterns=["model_index.json", "README.md"])
    assert sorted(p.name for p in pulled.iterdir()) == ["README.md", "model_index.json"]
    assert "license: mit" in (pulled / "README.md").read_text()


def test_push_refuses_pickle_weights_before_any_request(hub, saved_pipeline, tmp_path):
    import shutil

    folder, _ = saved_pipeline
    copy = tmp_path / "with-pickle"
    shutil.copytree(folder, copy)
    torch.save({"w": torch.zeros(2)}, copy / "unet" / "diffusion_pytorch_model.bin")
    (copy / "unet" / "extra_state").write_bytes(b"\x80\x04\x95" + b"\x00" * 8)  # pickle header, no suffix
    with pytest.raises(PickleFileError, match=r"unet/diffusion_pytorch_model\.bin, unet/extra_state"):
        push_model(copy, REPO)
    assert hub.requests == []


def test_push_of_a_non_reward_folder_is_refused_with_a_pointer(tmp_path):
    from reward_edit_pipeline.testing import save_dummy_instruct_pix2pix_folder

    folder = save_dummy_instruct_pix2pix_folder(tmp_path / "ip2p")
    with pytest.raises(ValueError, match="not a RewardEditPipeline; convert it first"):
        push_model(folder, REPO, dry_run=True, dry_run_dir=tmp_path / "out")


@pytest.mark.slow
def test_official_release_is_pulled_from_its_subfolder_and_converted(hub, tmp_path):
    """Serve the official layout (IP2P folder whose unet/ has the official extra keys) under the release repo's
    stage-2 folder; pulling downloads only that folder and converts it like `from_official` on a local copy."""
    from reward_edit_pipeline.hub.pull import OFFICIAL_MODEL_REPO, OFFICIAL_STAGE2_SUBFOLDER, pull_official_model

    from reward_edit_pipeline import RewardEditPipeline
    from reward_edit_pipeline.testing import save_dummy_instruct_pix2pix_folder, save_dummy_official_folder

    release = tmp_path / "release"
    save_dummy_official_folder(release / OFFICIAL_STAGE2_SUBFOLDER, seed=5)
    save_dummy_instruct_pix2pix_folder(release / "stage1_instruct_pix2pix", seed=6)
    hub.seed_folder(OFFICIAL_MODEL_REPO, release)
    expected = RewardEditPipeline.from_official(release / OFFICIAL_STAGE2_SUBFOLDER)
    expected.set_progress_bar_config(disable=True)

    pipe = pull_official_model(save_to=tmp_path / "converted")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(pipe), edit(expected))
    downloaded = [path for method, route, path in hub.requests if route == "resolve" and method == "GET"]
    assert downloaded and all("/resolve/" in p and OFFICIAL_STAGE2_SUBFOLDER in p for p in downloaded)
    reloaded = RewardEditPipeline.from_pretrained(tmp_path / "converted")
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(edit(reloaded), edit(expected))
