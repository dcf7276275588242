"""The package as users install it: build the sdist, build the wheel from that sdist, install the wheel
(non-editable) into a fresh virtual environment, and use it from an empty directory.

The editable install the README and CI use maps the repository's folders into ``reward_edit_pipeline`` and would
hide a wheel that lacks modules or data files; nothing here may see it. The fresh environment reuses the heavy
dependencies (torch, diffusers, ...) already installed for the tests through a ``.pth`` file that lists their
``site-packages`` folders: a path line in a ``.pth`` file only extends ``sys.path``, so the editable install's own
``.pth`` hooks in those folders never run there, and each check asserts that ``reward_edit_pipeline`` is imported from
the fresh environment. Building uses the declared PEP 517 backend (setuptools) without network access.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> its import name in the installed package (pyproject's `package-dir`)
PACKAGE_FOLDERS: dict[str, str] = {
    "reward_edit_pipeline": "reward_edit_pipeline",
    "train": "reward_edit_pipeline.train",
    "hub": "reward_edit_pipeline.hub",
    "comfy_nodes": "reward_edit_pipeline.comfy_nodes",
}
# what the sdist must carry besides the package sources
SDIST_REQUIRED = (
    "LICENSE",
    "README.md",
    "pyproject.toml",
    "requirements.txt",
    "__init__.py",
    "docs",
    "example_workflows",
)
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".pytest_cache", ".ruff_cache"
)
_SKIP_FILES = {".DS_Store"}

pytestmark = pytest.mark.slow


def _repository_package_files() -> dict[str, str]:
    """``{path inside the wheel: path in the repository}`` of every module and data file of the package."""
    files: dict[str, str] = {}
    for folder, package in PACKAGE_FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT / folder)
            if (
                not path.is_file()
                or "__pycache__" in relative.parts
                or path.suffix == ".pyc"
                or path.name in _SKIP_FILES
            ):
                continue
            files[f"{package.replace('.', '/')}/{relative.as_posix()}"] = f"{folder}/{relative.as_posix()}"
    return files


def _module_names(package_files: dict[str, str]) -> list[str]:
    """Import names of every package and module (``__main__`` modules run a program, so they are left out)."""
    names = []
    for wheel_path in package_files:
        if not wheel_path.endswith(".py") or wheel_path.endswith("__main__.py"):
            continue
        name = wheel_path[: -len(".py")].replace("/", ".")
        names.append(name[: -len(".__init__")] if name.endswith(".__init__") else name)
    return sorted(names)


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _pep517_build(kind: str, source_dir: Path, out_dir: Path) -> Path:
    """Call the declared build backend's ``build_sdist``/``build_wheel`` hook in `source_dir` (no isolation)."""
    backend = tomllib.loads((source_dir / "pyproject.toml").read_text(encoding="utf-8"))["build-system"][
        "build-backend"
    ]
    script = textwrap.dedent(
        f"""
        import importlib, sys
        backend = importlib.import_module({backend!r})
        print(backend.build_{kind}(sys.argv[1]))
        """
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout = _run([sys.executable, "-c", script, str(out_dir)], cwd=source_dir)
    return out_dir / stdout.strip().splitlines()[-1]


def _dependency_site_folders() -> list[str]:
    """The ``site-packages`` folders the tests import their dependencies from (never the repository's own folders;
    a ``site-packages`` folder may lie inside the checkout, as ``.venv/`` does in CI)."""
    folders = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if path.name in ("site-packages", "dist-packages") and path.is_dir():
            if str(path) not in folders:
                folders.append(str(path))
    return folders


def _clean_env(venv: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = str(_venv_bin(venv)) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"  # nothing here needs the network
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _venv_bin(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist built from a copy of the repository, and the wheel built from that sdist (as `python -m build`)."""
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"building needs setuptools>=77 (the [test] extra pins it), found {setuptools.__version__}"
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_COPY_IGNORE)
    sdist = _pep517_build("sdist", source, work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    wheel = _pep517_build("wheel", unpacked, work / "dist")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (non-editable) and the test dependencies reused."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = str(_venv_bin(venv) / "python")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent)
    (Path(purelib.strip()) / "_reuse_test_dependencies.pth").write_text(
        "\n".join(_dependency_site_folders()) + "\n", encoding="utf-8"
    )
    # --ignore-installed: never touch (uninstall) the editable install the dependency folders hold
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--no-compile",
            str(built["wheel"]),
        ],
        cwd=venv.parent,
        env=_clean_env(venv),
    )
    return venv


@pytest.fixture()
def empty_dir(tmp_path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_sdist_contains_what_the_repository_ships(built):
    with tarfile.open(built["sdist"]) as archive:
        names = archive.getnames()
    top = names[0].split("/")[0]
    members = {name[len(top) + 1 :] for name in names if name.startswith(top + "/")}
    missing = [
        entry
        for entry in SDIST_REQUIRED
        if entry not in members and not any(m.startswith(entry + "/") for m in members)
    ]
    assert not missing, f"the sdist lacks {missing}"
    for folder in ("docs", "example_workflows"):
        shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()}
        assert shipped <= members, f"the sdist lacks {sorted(shipped - members)}"
    package_sources = set(_repository_package_files().values())
    assert package_sources <= members, f"the sdist lacks {sorted(package_sources - members)}"


def test_wheel_contains_every_module_and_data_file(built):
    with zipfile.ZipFile(built["wheel"]) as archive:
        names = set(archive.namelist())
    expected = set(_repository_package_files())
    assert expected <= names, f"the wheel lacks {sorted(expected - names)}"
    assert "reward_edit_pipeline/py.typed" in names
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"reward_edit_pipeline"}, f"the wheel installs stray top-level names: {sorted(top_level)}"
    (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    metadata = archive_text(built["wheel"], metadata_name)
    assert "License-Expression: Apache-2.0" in metadata
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert f"Version: {_pyproject_version()}\n" in metadata


def archive_text(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode("utf-8")


def test_installed_wheel_imports_every_module_from_the_fresh_environment(venv, empty_dir):
    modules = _module_names(_repository_package_files())
    script = textwrap.dedent(
        """
        import importlib, json, sys
        origins, needs_comfyui = {}, {}
        for name in json.loads(sys.argv[1]):
            try:
                origins[name] = importlib.import_module(name).__file__
            except ModuleNotFoundError as error:
                if not name.startswith("reward_edit_pipeline.comfy_nodes.") or error.name.split(".")[0] in (
                    "reward_edit_pipeline", "torch", "diffusers", "transformers"
                ):
                    raise
                needs_comfyui[name] = error.name  # a node schema module: it imports ComfyUI's own API
        print(json.dumps({"prefix": sys.prefix, "origins": origins, "needs_comfyui": needs_comfyui}))
        """
    )
    python = str(_venv_bin(venv) / "python")
    report = json.loads(_run([python, "-c", script, json.dumps(modules)], cwd=empty_dir, env=_clean_env(venv)))
    prefix = Path(report["prefix"]).resolve()
    assert prefix == venv.resolve()
    outside = {name: path for name, path in report["origins"].items() if prefix not in Path(path).resolve().parents}
    assert not outside, f"modules imported from outside the fresh environment (editable install leaking?): {outside}"
    # only ComfyUI's own modules may be missing outside ComfyUI (the end-to-end tests import these inside it)
    assert set(report["needs_comfyui"].values()) <= {"comfy_api", "comfy", "folder_paths", "nodes", "node_helpers"}
    assert set(report["origins"]) | set(report["needs_comfyui"]) == set(modules)
    assert len(report["origins"]) > 40


def test_installed_cli_answers_help_and_version(venv, empty_dir):
    cli = str(_venv_bin(venv) / "reward-edit")
    env = _clean_env(venv)
    help_text = _run([cli, "--help"], cwd=empty_dir, env=env)
    assert "usage: reward-edit" in help_text and "edit" in help_text and "push-model" in help_text
    version = _run([cli, "--version"], cwd=empty_dir, env=env)
    assert version.strip() == f"reward-edit {_pyproject_version()}"  # the version is written once, in pyproject.toml
    module_help = _run(
        [str(_venv_bin(venv) / "python"), "-m", "reward_edit_pipeline", "--help"], cwd=empty_dir, env=env
    )
    assert module_help == help_text


def test_installed_cli_edits_a_photo_and_diffusers_loads_the_saved_folder(venv, empty_dir):
    import numpy as np
    from PIL import Image

    python = str(_venv_bin(venv) / "python")
    env = _clean_env(venv)
    photo = empty_dir / "photo.jpg"
    pixels = np.random.RandomState(0).randint(0, 256, (31, 45, 3), dtype=np.uint8)  # odd width and height
    Image.fromarray(pixels).save(photo, quality=90)
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from diffusers import DiffusionPipeline
        from reward_edit_pipeline.testing import save_dummy_pipeline
        import reward_edit_pipeline

        folder = save_dummy_pipeline(Path(sys.argv[1]))
        pipe = DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True)
        print(type(pipe).__module__, type(pipe).__name__, type(pipe.unet).__module__, type(pipe.unet).__name__)
        print(type(pipe) is reward_edit_pipeline.RewardEditPipeline)
        print(sys.modules[type(pipe).__module__].__file__)
        """
    )
    lines = _run([python, "-c", script, "tiny-model"], cwd=empty_dir, env=env).strip().splitlines()
    assert lines[-3].split() == [
        "reward_edit_pipeline.pipelines.pipeline_reward_edit",
        "RewardEditPipeline",
        "reward_edit_pipeline.models.unet_2d_reward",
        "RewardUNet2DConditionModel",
    ]
    assert lines[-2] == "True"
    assert venv.resolve() in Path(lines[-1]).resolve().parents

    cli = str(_venv_bin(venv) / "reward-edit")
    command = [cli, "edit", "photo.jpg", "make it blue", "-o", "edited.png", "--model", "tiny-model", "--steps", "2"]
    _run(command + ["--device", "cpu"], cwd=empty_dir, env=env)
    edited = Image.open(empty_dir / "edited.png")
    assert edited.mode == "RGB"
    # the output size rule is the library's (documented in the README); here: the photo's size up to the VAE's stride
    assert 0 <= 45 - edited.width < 8 and 0 <= 31 - edited.height < 8, edited.size
    assert np.asarray(edited).std() > 0
