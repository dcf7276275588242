"""Regenerate the official-parity fixtures (``tests/fixtures/parity``) from a checkout of the official code.

    python tests/make_parity_fixtures.py /path/to/Multi-Reward-Editing --out /tmp/parity
    python tests/make_parity_fixtures.py /path/to/Multi-Reward-Editing --check   # compare with the committed files

The official repository's ``Unet2DConditionModel.py`` and ``utils.py`` are imported unmodified from `official_dir`
(nothing of them is copied into this project). The method, the environment the committed files were made in, and the
tolerances are described in docs/parity.md. In short: a tiny but width-faithful UNet config, every parameter filled by
the counter-based generator of `tests/parity_weights.py` (no library RNG), random inputs from
``torch.Generator().manual_seed(1234)``, and one float32 and one float64 forward pass.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_weights import PARITY_DIR, generate_parameter  # noqa: E402

SEED = 1234
TIMESTEPS = (10, 900)
REWARD_SCORES = ((5.0, 5.0, 5.0), (1.0, 2.5, 4.0))
# (name, shape) of the random inputs, in the order they are drawn from the generator
RANDOM_INPUTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("sample", (2, 8, 8, 8)),
    ("encoder_hidden_states", (2, 77, 768)),
    ("negative_embeds", (2, 768)),
    ("image_embeds", (2, 1024)),
)
FP64_ATOL = 1e-10  # fp64 is deterministic; the committed run reproduces itself bit-exactly
FP32_ATOL = 1e-4  # fp32 differs by ~1e-5 between processes and implementations


def load_official_class(official_dir: Path, module_name: str, class_name: str) -> type:
    """The official UNet class, imported from `official_dir` (its ``utils.py`` must be importable as ``utils``)."""
    if not (official_dir / f"{module_name}.py").is_file():
        raise FileNotFoundError(f"`official_dir` {official_dir} has no {module_name}.py (an official checkout?)")
    sys.path.insert(0, str(official_dir))
    sys.modules.pop("utils", None)  # the official `from utils import ...` must find the checkout's utils.py
    return getattr(importlib.import_module(module_name), class_name)


def is_norm_weight(model: torch.nn.Module, key: str) -> bool:
    """True for the ``.weight`` of a GroupNorm, a LayerNorm or the official BertLayerNorm (offset 1.0)."""
    module_path, _, parameter = key.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    norm = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or type(module).__name__.endswith("LayerNorm")
    return parameter == "weight" and norm


def fill_weights(model: torch.nn.Module) -> list[dict]:
    """Fill every parameter with the generator; return the manifest entries in the model's state-dict order."""
    if list(model.buffers()):
        raise ValueError("the parity model is expected to have no buffers")
    entries, state_dict = [], {}
    for key, tensor in model.state_dict().items():
        offset = 1.0 if is_norm_weight(model, key) else 0.0
        array = generate_parameter(key, list(tensor.shape), offset)
        state_dict[key] = torch.from_numpy(array)
        entries.append(
            {
                "key": key,
                "shape": list(tensor.shape),
                "offset": offset,
                "sha256_f32le": hashlib.sha256(array.astype("<f4").tobytes()).hexdigest(),
                "sum_f64": float(np.sum(array, dtype=np.float64)),
                "first4": [float(v) for v in array.reshape(-1)[:4]],
            }
        )
    model.load_state_dict(state_dict, strict=True)
    return entries


def make_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    inputs = {name: torch.randn(shape, generator=generator) for name, shape in RANDOM_INPUTS}
    inputs["timestep"] = torch.tensor(TIMESTEPS, dtype=torch.int64)
    inputs["reward_scores"] = torch.tensor(REWARD_SCORES, dtype=torch.float32)
    return inputs


@torch.no_grad()
def run_forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """One forward pass with the model and the float inputs in `dtype` (the timestep stays int64)."""
    model = model.to(dtype)
    cast = {name: value.to(dtype) if value.is_floating_point() else value for name, value in inputs.items()}
    added = {key: cast[key] for key in ("reward_scores", "negative_embeds", "image_embeds")}
    output = model(cast["sample"], cast["timestep"], cast["encoder_hidden_states"], added_cond_kwargs=added)
    return output.sample if hasattr(output, "sample") else output[0]


def extra_keys(config: dict, keys: list[str], shapes: dict[str, list[int]]) -> list[dict]:
    """The official keys a stock diffusers `UNet2DConditionModel` with the same config does not have."""
    from diffusers import UNet2DConditionModel

    stock_config = {k: v for k, v in config.items() if not k.startswith("_")}
    stock = set(UNet2DConditionModel(**stock_config).state_dict())
    return [{"key": key, "shape": shapes[key]} for key in keys if key not in stock]


def official_commit(official_dir: Path) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(official_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() or None


def versions() -> dict[str, str]:
    import diffusers

    found = {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__}
    found["numpy"] = np.__version__
    return found


def build(official_dir: Path, module_name: str, class_name: str) -> dict:
    """Everything the fixtures hold, computed from the official code."""
    config = json.loads((PARITY_DIR / "config.json").read_text(encoding="utf-8"))
    official_class = load_official_class(official_dir, module_name, class_name)
    torch.manual_seed(0)  # construction draws from torch's RNG; every parameter is overwritten just after
    model = official_class(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    params = fill_weights(model)
    inputs = make_inputs()
    sample_fp32 = run_forward(model, inputs, torch.float32)
    sample_fp64 = run_forward(model, inputs, torch.float64)
    shapes = {entry["key"]: entry["shape"] for entry in params}
    manifest = {
        "generator": {
            "description": "w = float32(offset + 0.02*sqrt(3)*(2u-1)), u = (splitmix64((crc32(key) << 32) + i) >> 11) "
            "* 2^-53, i = flat C-order index",
            "std": 0.02,
            "distribution": "uniform[-0.02*sqrt(3), 0.02*sqrt(3)] (+offset)",
            "offset_rule": "offset = 1.0 for the .weight of every GroupNorm / nn.LayerNorm / utils.BertLayerNorm, "
            "else 0.0",
        },
        "total_params": int(sum(int(np.prod(entry["shape"])) for entry in params)),
        "num_keys": len(params),
        "extra_keys_vs_stock_diffusers": extra_keys(config, list(shapes), shapes),
        "params": params,
    }
    run_info = {
        "versions": versions(),
        "official_repo": {"path": str(official_dir), "commit": official_commit(official_dir)},
        "observed_max_abs_diffs": {
            "official_fp32_vs_official_fp64": float((sample_fp32.double() - sample_fp64).abs().max()),
        },
    }
    return {
        "config": config,
        "manifest": manifest,
        "inputs": inputs,
        "outputs": {"sample_fp32": sample_fp32.float(), "sample_fp64": sample_fp64.double()},
        "run_info": run_info,
    }


def write(result: dict, out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out_dir} is not empty; choose a new folder or pass --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(result["config"], indent=2, sort_keys=True) + "\n")
    (out_dir / "official_unet_manifest.json").write_text(json.dumps(result["manifest"], indent=1) + "\n")
    save_file(result["inputs"], str(out_dir / "inputs.safetensors"))
    save_file(result["outputs"], str(out_dir / "outputs.safetensors"))
    (out_dir / "run_info.json").write_text(json.dumps(result["run_info"], indent=1) + "\n")


def check(result: dict, fixtures: Path) -> list[str]:
    """Differences between a fresh run and the committed fixtures (empty: they agree within the tolerances)."""
    problems = []
    committed = json.loads((fixtures / "official_unet_manifest.json").read_text(encoding="utf-8"))
    fresh_params = {p["key"]: p for p in result["manifest"]["params"]}
    for entry in committed["params"]:
        fresh = fresh_params.get(entry["key"])
        if fresh is None:
            problems.append(f"{entry['key']}: missing from the official model")
        elif (fresh["shape"], fresh["offset"], fresh["sha256_f32le"]) != (
            entry["shape"],
            entry["offset"],
            entry["sha256_f32le"],
        ):
            problems.append(f"{entry['key']}: shape, offset or weights differ")
    if [p["key"] for p in committed["params"]] != list(fresh_params):
        problems.append("the state-dict keys or their order differ")
    fresh_extra = [e["key"] for e in result["manifest"]["extra_keys_vs_stock_diffusers"]]
    if [e["key"] for e in committed["extra_keys_vs_stock_diffusers"]] != fresh_extra:
        problems.append("the extra keys (vs a stock diffusers UNet) differ")
    inputs = load_file(str(fixtures / "inputs.safetensors"))
    for name, value in inputs.items():
        if not torch.equal(value, result["inputs"][name]):
            problems.append(f"input {name} differs")
    outputs = load_file(str(fixtures / "outputs.safetensors"))
    for name, atol in (("sample_fp64", FP64_ATOL), ("sample_fp32", FP32_ATOL)):
        difference = float((outputs[name].double() - result["outputs"][name].double()).abs().max())
        print(f"{name}: max abs difference to the committed fixture {difference:.3g} (tolerance {atol:g})")
        if not difference <= atol:
            problems.append(f"{name} differs by {difference:.3g} (> {atol:g})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official_dir", type=Path, help="checkout of the official Multi-Reward-Editing repository")
    parser.add_argument("--out", type=Path, default=None, help="write the fixtures into this (new or empty) folder")
    parser.add_argument("--overwrite", action="store_true", help="with --out: replace the files of a non-empty folder")
    parser.add_argument("--check", action="store_true", help="compare with the committed tests/fixtures/parity")
    parser.add_argument("--module", default="Unet2DConditionModel", help="the official UNet module (file stem)")
    parser.add_argument("--class-name", default="UNet2DConditionModel", help="the official UNet class")
    args = parser.parse_args(argv)
    if args.out is None and not args.check:
        parser.error("pass --out DIR (write the fixtures) and/or --check (compare with the committed ones)")
    result = build(args.official_dir.resolve(), args.module, args.class_name)
    if args.out is not None:
        write(result, args.out, args.overwrite)
        print(f"wrote the parity fixtures to {args.out}")
    if args.check:
        problems = check(result, PARITY_DIR)
        for problem in problems:
            print(f"MISMATCH: {problem}", file=sys.stderr)
        if problems:
            return 1
        print("the official code reproduces the committed parity fixtures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
