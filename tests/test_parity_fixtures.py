"""The parity-fixture script (tests/make_parity_fixtures.py) reproduces the committed inputs; docs/parity.md."""

from __future__ import annotations

import pytest
import torch
from make_parity_fixtures import main, make_inputs
from parity_weights import PARITY_DIR
from safetensors.torch import load_file


def test_the_documented_seed_and_draw_order_reproduce_the_committed_inputs():
    committed = load_file(str(PARITY_DIR / "inputs.safetensors"))
    fresh = make_inputs()
    assert set(fresh) == set(committed)
    for name, value in committed.items():
        assert torch.equal(fresh[name], value), name


def test_the_script_needs_an_official_checkout(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="has no Unet2DConditionModel.py"):
        main([str(tmp_path), "--check"])
    with pytest.raises(SystemExit):
        main([str(tmp_path)])  # neither --out nor --check
    assert "--out DIR" in capsys.readouterr().err
