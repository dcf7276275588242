"""Fixtures shared by the test files.

- ``openai_api_key`` / ``openai_server``: a test key in ``OPENAI_API_KEY`` and a loopback OpenAI-compatible judge
  server (`openai_server.OpenAIServer`, default replies: deterministic valid judgments);
- ``hub_token`` / ``hub``: a loopback Hugging Face Hub (`hub_server.running_hub`) with ``huggingface_hub`` and
  ``datasets`` pointed at it, a write token in ``HF_TOKEN`` and a fresh cache;
- ``tiny_pipeline`` / ``tiny_pipeline_folder``: the seeded tiny `RewardEditPipeline` of `reward_edit_pipeline.testing`,
  in memory (one per test module) and saved as a folder (one per session);
- ``annotation_store``: an empty `AnnotationStore` in the test's temporary folder;
- ``single_torch_thread``: one torch intra-op thread for a module (tiny models on a shared, busy CPU).

Nothing here reaches the network: both servers listen on 127.0.0.1. Helpers that build data files (triplet folders,
official rewards) are plain functions in `training_data.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

OPENAI_TEST_KEY = "sk-test-secret-value"
HUB_TEST_TOKEN = "hf_test_write_token"


@pytest.fixture
def openai_api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake key in ``OPENAI_API_KEY`` (tests check it never appears in logs or outputs)."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_TEST_KEY)
    return OPENAI_TEST_KEY


@pytest.fixture
def openai_server(openai_api_key: str) -> Iterator[Any]:
    """A loopback OpenAI-compatible server with default settings (tests needing other settings start their own)."""
    from openai_server import OpenAIServer

    with OpenAIServer() as server:
        yield server


@pytest.fixture
def hub_token() -> str:
    return HUB_TEST_TOKEN


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_token: str) -> Iterator[Any]:
    """A running loopback Hub (`hub_server.HubState`), the Hub clients pointed at it, ``HF_TOKEN`` set."""
    from hub_server import point_clients_at, running_hub

    with running_hub() as state:
        point_clients_at(state.endpoint, monkeypatch, tmp_path / "hf-cache")
        monkeypatch.setenv("HF_TOKEN", hub_token)
        yield state


@pytest.fixture(scope="module")
def tiny_pipeline() -> Any:
    """The tiny `RewardEditPipeline` (seed 0) on CPU, shared by the tests of one module."""
    from reward_edit_pipeline.testing import make_dummy_pipeline

    return make_dummy_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline (seed 0) saved with `save_pretrained` (safetensors), shared by the whole session."""
    from reward_edit_pipeline.testing import save_dummy_pipeline

    return save_dummy_pipeline(tmp_path_factory.mktemp("tiny_pipeline") / "pipeline", seed=0)


@pytest.fixture
def annotation_store(tmp_path: Path) -> Iterator[Any]:
    """An empty annotation store at ``<tmp_path>/store.sqlite``, closed after the test."""
    from reward_edit_pipeline.judge import AnnotationStore

    with AnnotationStore(tmp_path / "store.sqlite") as store:
        yield store


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, oversubscribed CPU, spinning OpenMP threads make tiny models 10-100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
