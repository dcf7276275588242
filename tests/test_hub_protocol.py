"""Hub client behaviours against the loopback server: tokens, missing repos/revisions, retries, gated repos, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubState, running_hub
from reward_edit_pipeline.hub._common import HubTokenError
from reward_edit_pipeline.hub.pull import download_model, download_official_annotations
from reward_edit_pipeline.hub.push_dataset import push_dataset, stage_dataset_folder
from test_hub_dataset import make_rows


def test_push_without_any_token_raises_before_contacting_the_hub(hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubTokenError, match="HF_TOKEN"):
        push_dataset(make_rows(1), "tester/rewards")
    assert hub.requests == []


def test_push_with_rejected_token_fails_and_cli_never_prints_the_token(hub, monkeypatch, tmp_path, capsys):
    from reward_edit_pipeline.cli import main

    source = stage_dataset_folder(make_rows(1), "tester/rewards", tmp_path / "source")
    secret = "hf_not_a_valid_token_0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    assert main(["push-dataset", str(source), "tester/rewards"]) == 2
    captured = capsys.readouterr()
    assert "401" in captured.err
    assert secret not in captured.out + captured.err
    assert ("dataset", "tester/rewards") not in hub.repos


def test_pull_of_missing_repo_raises_repository_not_found(hub):
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        download_model("tester/does-not-exist")


def test_pull_of_missing_revision_raises_revision_not_found(hub, tmp_path):
    from huggingface_hub.errors import RevisionNotFoundError

    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    hub.seed_folder("tester/pipe", tmp_path / "pipe")
    with pytest.raises(RevisionNotFoundError):
        download_model("tester/pipe", revision="no-such-branch")


def test_pull_of_repo_without_pipeline_names_what_is_missing(hub, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    hub.seed_folder("tester/other", tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        download_model("tester/other")


def test_dropped_lfs_upload_connection_is_retried_within_the_same_push(hub):
    hub.inject_failure("lfs-upload", count=1, mode="drop")
    result = push_dataset(make_rows(2), "tester/rewards")
    assert result.created_commit
    assert hub.count("lfs-upload") == 2  # one dropped attempt + the retry of the single shard
    assert len(hub.lfs_objects) == 1


def test_interrupted_push_is_resumed_by_pushing_again_without_reuploading_stored_shards(hub):
    from huggingface_hub.errors import HfHubHTTPError

    rows = make_rows(3)
    hub.inject_failure("commit", count=1, mode="500")
    with pytest.raises(HfHubHTTPError):
        push_dataset(rows, "tester/rewards", max_shard_bytes=1)
    uploads_before_retry = hub.count("lfs-upload")
    assert uploads_before_retry == 3 and len(hub.commits("tester/rewards", "dataset")) == 1  # only the initial commit
    result = push_dataset(rows, "tester/rewards", max_shard_bytes=1)
    assert result.created_commit
    assert hub.count("lfs-upload") == uploads_before_retry  # the shards already stored are not sent again
    files = hub.repos[("dataset", "tester/rewards")].head("main").files
    assert sorted(f for f in files if f.startswith("data/")) == [
        f"data/train-0000{i}-of-00003.parquet" for i in range(3)
    ]


def test_gated_official_dataset_explains_the_access_step(hub, tmp_path):
    (tmp_path / "official").mkdir()
    (tmp_path / "official" / "RewardEdit_20K.json").write_text(json.dumps({"k": []}))
    hub.seed_folder("Gstar666/RewardEdit", tmp_path / "official", repo_type="dataset", gated=True)
    with pytest.raises(PermissionError, match="accept its access conditions"):
        download_official_annotations()
    hub.repos[("dataset", "Gstar666/RewardEdit")].granted_users.add("tester")
    path = download_official_annotations()
    assert json.loads(Path(path).read_text()) == {"k": []}


@pytest.mark.slow
def test_cli_in_a_fresh_process_reaches_the_hub_named_by_hf_endpoint(tmp_path, hub_token):
    """No patching: the variables a user would set are enough (huggingface_hub reads them at import)."""
    source = stage_dataset_folder(make_rows(2), "tester/rewards", tmp_path / "source")
    with running_hub(HubState()) as state:
        env = {
            **os.environ,
            "HF_ENDPOINT": state.endpoint,
            "HF_TOKEN": hub_token,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",  # the loopback server speaks the legacy LFS protocol only
        }
        command = [sys.executable, "-m", "reward_edit_pipeline", "push-dataset", str(source), "tester/rewards"]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr
        assert "pushed" in completed.stdout
        assert hub_token not in completed.stdout + completed.stderr
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "no new commit" in again.stdout
        assert len(state.commits("tester/rewards", "dataset")) == 2  # initial + one push


def test_official_dataset_pull_imports_the_annotations_into_a_store(hub, tmp_path):
    from reward_edit_pipeline.hub.pull import pull_official_dataset

    from reward_edit_pipeline.data import load_reward_records, parse_official_json

    official = {
        "0000011": [
            {"Score": 5, "Negative Prompt": "None"},
            {"Score": 3, "Negative Prompt": "the dog moved"},
            {"Score": 4.5, "Negative Prompt": "None"},
        ],
        "0000042": [
            {"Score": 1, "Negative Prompt": "nothing changed"},
            {"Score": 5, "Negative Prompt": "None"},
            {"Score": 2, "Negative Prompt": "blurry"},
        ],
    }
    (tmp_path / "official").mkdir()
    (tmp_path / "official" / "RewardEdit_20K.json").write_text(json.dumps(official))
    hub.seed_folder("Gstar666/RewardEdit", tmp_path / "official", repo_type="dataset", gated=True)
    hub.repos[("dataset", "Gstar666/RewardEdit")].granted_users.add("tester")
    report = pull_official_dataset(tmp_path / "store.sqlite")
    assert report["imported"] == 2
    assert load_reward_records(tmp_path / "store.sqlite") == parse_official_json(official)


def test_private_dataset_push_is_only_readable_with_the_token(hub, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    push_dataset(make_rows(1), "tester/private-rewards", private=True)
    assert hub.repos[("dataset", "tester/private-rewards")].private
    assert HfApi().dataset_info("tester/private-rewards").private is True
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info("tester/private-rewards")
