"""Packaging: every third-party import is a declared dependency, one version, LICENSE and py.typed ship.

The end-to-end proof (a plain wheel install in a fresh venv running each README command) is
``.ci/plain_install.sh``; these checks are the fast, offline part of it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("faceprep", "diffengine")
# Imports that are optional by design (imported lazily or guarded): module -> (extra, distribution).
OPTIONAL = {"triton": ("triton", "triton"), "ray": ("ray", "ray")}


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, spec
    return _normalise(match.group(1))


def _top_level_imports() -> dict[str, set[str]]:
    """Top-level module name → files importing it, over every module of both packages (any depth)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = _pyproject()["project"]
    required = {_requirement_name(spec) for spec in project["dependencies"]}
    extras = {k: {_requirement_name(s) for s in v} for k, v in project["optional-dependencies"].items()}
    providers = importlib.metadata.packages_distributions()
    third_party = {
        name: files
        for name, files in _top_level_imports().items()
        if name not in sys.stdlib_module_names and name not in PACKAGES and name != "__future__"
    }
    assert {"torch", "cv2", "PIL", "onnxruntime"} <= set(third_party)  # the scan sees real imports
    problems = []
    for module, files in sorted(third_party.items()):
        dists = {_normalise(d) for d in providers.get(module, [])}
        if module in OPTIONAL:  # need not be installed here
            extra, dist = OPTIONAL[module]
            if dist not in extras.get(extra, set()):
                problems.append(f"optional {module} ({sorted(files)}) is not in the [{extra}] extra")
        elif not dists:
            problems.append(f"{module} (imported by {sorted(files)}) is not installed here")
        elif not dists & required:
            problems.append(
                f"{module} (distribution {sorted(dists)}, imported by {sorted(files)}) is undeclared"
            )
    assert not problems, "\n".join(problems)


def test_no_dependency_is_declared_that_nothing_imports() -> None:
    project = _pyproject()["project"]
    providers = importlib.metadata.packages_distributions()
    imported = {_normalise(d) for m in _top_level_imports() for d in providers.get(m, [])}
    unused = {_requirement_name(s) for s in project["dependencies"]} - imported
    assert not unused, f"declared but never imported by faceprep/diffengine: {sorted(unused)}"
    # scipy serves the tests and the benchmarks only.
    assert "scipy" in {_requirement_name(s) for s in project["optional-dependencies"]["test"]}


def test_opencv_spec_matches_the_yunet_plugin() -> None:
    ours = [s for s in _pyproject()["project"]["dependencies"] if _requirement_name(s).startswith("opencv")]
    with open(ROOT / "plugins" / "faceprep-yunet" / "pyproject.toml", "rb") as handle:
        plugin = tomllib.load(handle)["project"]
    theirs = [s for s in plugin["dependencies"] if _requirement_name(s).startswith("opencv")]
    assert ours == theirs == ["opencv-python-headless>=4.8,<5"]


def test_one_version_source() -> None:
    import diffengine
    import faceprep

    pyproject = _pyproject()
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "faceprep.__version__"}
    assert diffengine.__version__ == faceprep.__version__, "stale install: pip install -e . again"
    assert importlib.metadata.version("faceprep-diffengine") == faceprep.__version__


def test_licence_and_typing_markers_are_package_data() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "faceprep-diffengine contributors" in text
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file()
        assert "py.typed" in package_data[package]


@pytest.mark.slow
def test_wheel_holds_licence_markers_and_declared_requirements(tmp_path: Path) -> None:
    """Build the wheel offline (no build isolation) from a copy of the sources and read it back."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (PEP 639 licence metadata)")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    import faceprep

    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"faceprep_diffengine-{faceprep.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"faceprep_diffengine-{faceprep.__version__}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
    assert {"faceprep/py.typed", "diffengine/py.typed", f"{info}/licenses/LICENSE"} <= names
    assert not any(n.startswith(("tests/", "plugins/", "bench/")) for n in names)
    requires = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    plain = [r for r in requires if "extra ==" not in r]
    assert "opencv-python-headless<5,>=4.8" in plain
    assert not [r for r in plain if r.startswith("scipy")]
    assert "License-Expression: MIT" in metadata
