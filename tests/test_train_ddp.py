"""Data-parallel training with 2 CPU processes (gloo) under `accelerate launch`: the same program as on GPUs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from training_data import write_official_rewards, write_triplet_folder

from reward_edit_pipeline.testing import save_dummy_instruct_pix2pix_folder

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_process_ddp_uses_disjoint_shards_and_ends_with_identical_weights(tmp_path):
    """Also builds the latent cache with both processes (each encodes half, the main process writes the index)."""
    save_dummy_instruct_pix2pix_folder(tmp_path / "base")
    keys = write_triplet_folder(tmp_path / "data", 8)
    write_official_rewards(tmp_path / "rewards.json", keys)
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--config_file", str(CONFIGS / "ddp.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "reward_edit_pipeline.train",
        "--stage", "2", "--pretrained_model_name_or_path", str(tmp_path / "base"),
        "--train_data_dir", str(tmp_path / "data"), "--rewards", str(tmp_path / "rewards.json"),
        "--output_dir", str(tmp_path / "out"), "--resolution", "32", "--train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--max_train_steps", "2", "--checkpointing_steps", "100",
        "--learning_rate", "1e-3", "--mixed_precision", "no", "--dataloader_num_workers", "0",
        "--report_to", "none", "--log_sample_ids", "--cache_latents",
    ]  # fmt: skip
    # The shipped DDP config, on 2 CPU processes: ACCELERATE_USE_CPU makes accelerate pick the MULTI_CPU (gloo)
    # backend for the torchrun-launched processes.
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]

    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["optimization_steps"] == 2
    shards = []
    for rank in (0, 1):
        lines = (tmp_path / "out" / f"sample_ids_rank{rank}.jsonl").read_text().splitlines()
        shards.append([index for line in lines for index in json.loads(line)["indices"]])
    assert len(shards[0]) == len(shards[1]) == 4
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(8))
    # each rank saw other data (its losses differ), yet both end with the same weights: gradients were all-reduced
    per_rank = summary["per_process"]
    assert per_rank[0]["last_losses"] != per_rank[1]["last_losses"]
    cache_index = json.loads((tmp_path / "out" / "latents_cache" / "index.json").read_text())
    assert sorted(cache_index["example_indices"]) == list(range(8))
    assert {shard for shard, _ in cache_index["rows"]} == {
        "shard-r000-00000.safetensors",
        "shard-r001-00000.safetensors",
    }
    fingerprints = summary["unet_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
