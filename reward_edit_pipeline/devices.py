"""The one resolver for devices, dtypes and seeds, used by `load_pipeline`, the CLI, the ComfyUI nodes, the benchmark and
the trainer.

Rules (also in ``docs/rules.md``):

- device ``None``/``"auto"`` → ``cuda`` when available, else ``cpu``. Asking for ``cuda`` (or ``mps``) where torch sees
  none is a `ValueError` naming the argument (never a silent fallback to the CPU).
- dtype names: ``auto``, ``float32``/``fp32``, ``float16``/``fp16``/``half``, ``bfloat16``/``bf16`` or a
  `torch.dtype`; ``auto`` → float16 on CUDA, float32 elsewhere.
- half precision on the CPU: **float16 is refused** with a `ValueError` that suggests float32 or bfloat16 (CPU float16
  kernels are slow and incomplete across torch versions); **bfloat16 works** on the CPU.
- training's ``--mixed_precision`` (``no``/``fp16``/``bf16``) goes through the same rule.
- seeds are integers in [0, 2**64 - 1] (what `torch.Generator.manual_seed` and ComfyUI accept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: accepted dtype names (CLI ``--dtype``, node ``dtype``) → canonical torch dtype name
DTYPE_NAMES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
#: the names the CLI offers (the nodes offer the short forms ``fp32``/``fp16``/``bf16``; both work everywhere)
DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
MIXED_PRECISION_DTYPES: dict[str, str] = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
MAX_SEED: int = 2**64 - 1


def resolve_device(device: Any = None, name: str = "device") -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; an unavailable accelerator is a clear `ValueError`."""
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r} ({error})"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"`{name}` is {str(resolved)!r} but torch sees no CUDA GPU (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}); use 'cpu' or 'auto', or install a CUDA build of torch"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"`{name}` is {str(resolved)!r} but only {torch.cuda.device_count()} CUDA device(s) exist "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"`{name}` is 'mps' but this torch build has no available MPS device; use 'cpu' or 'auto'")
    return resolved


def resolve_dtype(dtype: Any, device: Any = "cpu", name: str = "dtype") -> torch.dtype:
    """A dtype name or `torch.dtype` → `torch.dtype` for `device` (``auto``: float16 on CUDA, float32 elsewhere).

    float16 on the CPU raises a `ValueError` (use float32 or bfloat16); see the module docstring.
    """
    import torch

    device_type = torch.device(device).type if device is not None else "cpu"
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return torch.float16 if device_type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPE_NAMES:
        resolved = getattr(torch, DTYPE_NAMES[dtype.strip().lower().removeprefix("torch.")])
    else:
        raise ValueError(f"`{name}` must be one of {', '.join(['auto', *DTYPE_NAMES])} or a torch.dtype, got {dtype!r}")
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"`{name}` must be float32, float16 or bfloat16, got {resolved}")
    if resolved == torch.float16 and device_type == "cpu":
        raise ValueError(
            f"`{name}` float16 is not supported on the CPU (slow, and not every operation exists in half precision "
            "there); use float32 (or bfloat16) on the CPU, or a CUDA device for float16"
        )
    return resolved


def resolve_mixed_precision(mixed_precision: str, device: Any, name: str = "--mixed_precision") -> torch.dtype:
    """Training's ``no``/``fp16``/``bf16`` → the weight dtype, under the same CPU rule as `resolve_dtype`."""
    if mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ValueError(f"`{name}` must be one of {', '.join(MIXED_PRECISION_DTYPES)}, got {mixed_precision!r}")
    try:
        return resolve_dtype(MIXED_PRECISION_DTYPES[mixed_precision], device, name=name)
    except ValueError:
        raise ValueError(f"{name} fp16 needs a GPU; on the CPU use {name} no (or bf16)") from None


def pop_dtype_kwarg(kwargs: dict[str, Any]) -> Any:
    """Take the loading dtype out of `kwargs`, accepting diffusers' newer ``dtype=`` and the older ``torch_dtype=``.

    Giving both (with different values) is a `ValueError`. Returns ``None`` when neither is given.
    """
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"give `dtype` or `torch_dtype` (its older name), not both: got {dtype!r} and {torch_dtype!r}")
    return dtype if dtype is not None else torch_dtype


def diffusers_dtype_kwarg() -> str:
    """The keyword diffusers' loaders take the dtype by: ``dtype`` from diffusers 0.42 on, ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present from 0.42 on)
    except ImportError:  # pragma: no cover - older diffusers
        return "torch_dtype"
    return "dtype"


def normalize_dtype_kwarg(kwargs: dict[str, Any]) -> None:
    """Accept ``dtype=`` and its older name ``torch_dtype=`` (not both) in loader keyword arguments, check a dtype
    given by name, and pass it on under the name the installed diffusers expects (in place)."""
    dtype = pop_dtype_kwarg(kwargs)
    if isinstance(dtype, str) and dtype != "auto":
        import torch

        if dtype.lower() not in DTYPE_NAMES:
            raise ValueError(f"`dtype` must be a torch.dtype or one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        dtype = getattr(torch, DTYPE_NAMES[dtype.lower()])
    if dtype is not None:
        kwargs[diffusers_dtype_kwarg()] = dtype


def check_seed(seed: Any, name: str = "seed") -> int:
    """An integer in [0, 2**64 - 1]; anything else is a `ValueError` naming `name` and the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`{name}` must be an integer in [0, {MAX_SEED}] (0 to 2**64 - 1), got {seed!r}")
    return seed


def make_generator(seed: int, device: Any = "cpu", name: str = "seed") -> torch.Generator:
    """A `torch.Generator` on `device` (CPU by default: same images on every device) seeded with a checked seed."""
    import torch

    return torch.Generator(device=device).manual_seed(check_seed(seed, name))
