"""Plugin manager seen from the user's side: ``faceprep plugins``, names, clashes, third-party stages."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from faceprep import plugins
from faceprep.cli import main
from faceprep.hookspecs import StageSpec, hookimpl
from faceprep.imageio import load_image
from faceprep.pipeline import Pipeline


def test_plugins_command_lists_builtin_stages() -> None:
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "detectors:" and "aligners:" in lines and "fills:" in lines
    for name in ("scrfd", "ffhq", "box", "mirror-blur", "reflect", "edge", "constant"):
        assert any(line.split()[:1] == [name] for line in lines), name


def test_plugins_command_says_why_scrfd_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEPREP_SCRFD_MODEL", raising=False)
    monkeypatch.setenv("FACEPREP_CACHE", str(tmp_path))
    monkeypatch.setenv("FACEPREP_OFFLINE", "1")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (i,) = [n for n, line in enumerate(lines) if line.split()[:1] == ["scrfd"]]
    assert lines[i].split()[1] == "unavailable"
    why = lines[i + 1].split(maxsplit=1)
    assert why[0] == "why:" and "downloads are off (FACEPREP_OFFLINE)" in why[1]
    assert why[1].endswith("set FACEPREP_SCRFD_MODEL or --model") and len(why[1]) < 200


def _register(name: str, **hooks: object) -> Iterator[None]:
    module = types.SimpleNamespace(**hooks)
    pm = plugins.get_plugin_manager()
    pm.register(module, name=name)
    try:
        yield
    finally:
        pm.unregister(module)


class GreyFill:
    """Fill outside pixels with mid-grey (a third-party stage)."""

    def __call__(
        self, canvas: torch.Tensor, pad: tuple[int, int, int, int], quad_side: float
    ) -> torch.Tensor:
        left, top, right, bottom = pad
        out = canvas.clone()
        h, w = out.shape[1:]
        mask = torch.ones((h, w), dtype=torch.bool)
        mask[top : h - bottom, left : w - right] = False
        out[:, mask] = 128.0
        return out


@hookimpl
def _grey_fills() -> list[StageSpec]:
    return [StageSpec("test-grey", GreyFill, "mid-grey outside the photo")]


@hookimpl
def _clashing_fills() -> list[StageSpec]:
    return [StageSpec("mirror-blur", GreyFill, "tries to replace the built-in")]


@pytest.fixture
def grey_plugin() -> Iterator[None]:
    yield from _register("test-grey-plugin", faceprep_fills=_grey_fills)


@pytest.fixture
def clashing_plugin() -> Iterator[None]:
    yield from _register("test-clash-plugin", faceprep_fills=_clashing_fills)


def test_third_party_fill_is_listed_and_used(grey_plugin: None, scrfd_model: Path, photos_dir: Path) -> None:
    listed = CliRunner().invoke(main, ["plugins"]).output
    assert "test-grey" in listed and "mid-grey outside the photo" in listed
    # a face at the photo's edge: obama_partial_face is cut off, so the crop needs filling
    image = load_image(photos_dir / "face_recognition/tests/test_images/obama_partial_face.jpg")
    pipe = Pipeline.from_names("scrfd", fill="test-grey", size=64, model=str(scrfd_model), rotation_fix=False)
    crops = pipe(image)
    assert crops and crops[0].filled_fraction > 0.05
    flat = np.all(crops[0].image == 128, axis=2).mean()
    assert flat > 0.5 * crops[0].filled_fraction  # the filled area really is our grey


def test_name_clash_raises(clashing_plugin: None) -> None:
    with pytest.raises(ValueError, match="two plugins register the fill 'mirror-blur'"):
        plugins.stages("fill")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 1 and "two plugins register the fill 'mirror-blur'" in result.output


def test_unknown_names_give_a_clear_error() -> None:
    with pytest.raises(plugins.UnknownStageError, match=r"unknown detector 'nope' \(installed: .*scrfd"):
        plugins.create("detector", "nope")
    with pytest.raises(plugins.UnknownStageError, match=r"unknown fill 'blurry' \(installed: .*mirror-blur"):
        Pipeline.from_names("scrfd", fill="blurry")


# ----------------------------------------------------------------------------- broken third-party plugins


def _dist(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution in ``root`` (dist-info + modules) with ``faceprep`` entry points."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[faceprep]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def fresh_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Entry points on, and a plugin manager rebuilt before and after the test."""
    monkeypatch.delenv("FACEPREP_DISABLE_ENTRYPOINTS", raising=False)
    plugins.get_plugin_manager.cache_clear()
    yield
    plugins.get_plugin_manager.cache_clear()


GOOD_PLUGIN = """
from faceprep import StageSpec, hookimpl

class Flat:
    def __call__(self, canvas, pad, quad_side):
        return canvas

@hookimpl
def faceprep_fills():
    return [StageSpec("ep-flat", Flat, "a fill from an entry point")]
"""


def test_broken_entry_point_is_skipped_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_manager: None
) -> None:
    _dist(
        tmp_path,
        "faceprep_testbroken",
        {"broken": "fp_test_broken", "crashy": "fp_test_crashy", "good": "fp_test_good"},
        {
            "fp_test_broken": "import fp_test_no_such_dependency\n",
            "fp_test_crashy": "raise RuntimeError('GPU driver\\n too old')\n",
            "fp_test_good": GOOD_PLUGIN,
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(plugins.PluginLoadWarning) as caught:
        fills = plugins.stages("fill")
    assert "ep-flat" in fills and "mirror-blur" in fills  # the others still work
    assert "scrfd" in plugins.stages("detector")
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "faceprep: plugin 'broken' (entry point fp_test_broken) failed to load: "
        "ModuleNotFoundError: No module named 'fp_test_no_such_dependency'; skipped",
        "faceprep: plugin 'crashy' (entry point fp_test_crashy) failed to load: "
        "RuntimeError: GPU driver too old; skipped",
    ]
    assert [(f.name, f.origin) for f in plugins.load_failures()] == [
        ("broken", "entry point fp_test_broken"),
        ("crashy", "entry point fp_test_crashy"),
    ]
    listed = CliRunner().invoke(main, ["plugins"])
    assert listed.exit_code == 0, listed.output
    assert "ep-flat" in listed.output and "scrfd" in listed.output


def test_entry_point_without_decorated_hook_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_manager: None
) -> None:
    _dist(
        tmp_path,
        "faceprep_testnohook",
        {"nohook": "fp_test_nohook"},
        {"fp_test_nohook": "def faceprep_fills():\n    return []\n"},  # forgot @hookimpl
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(plugins.PluginLoadWarning) as caught:
        plugins.get_plugin_manager()
    assert [str(w.message) for w in caught] == [
        "faceprep: plugin 'nohook' (entry point fp_test_nohook) failed to load: faceprep_fills not "
        "decorated with @faceprep.hookimpl, so it registers no stage; skipped"
    ]
    assert plugins.get_plugin_manager().get_plugin("nohook") is None
    assert [f.name for f in plugins.load_failures()] == ["nohook"]


def test_register_without_hooks_warns_and_hook_errors_are_isolated(fresh_manager: None) -> None:
    with pytest.warns(plugins.PluginLoadWarning, match=r"plugin 'empty' \(registered as 'empty'\)"):
        assert plugins.register(types.SimpleNamespace(helper=lambda: 1), "empty") is False

    @hookimpl
    def faceprep_detector() -> list[StageSpec]:  # misspelt: the hook is faceprep_detectors
        return []

    with pytest.warns(plugins.PluginLoadWarning) as typo:
        assert plugins.register(types.SimpleNamespace(faceprep_detector=faceprep_detector), "typo") is False
    assert [str(w.message) for w in typo] == [
        "faceprep: plugin 'typo' (registered as 'typo') failed to load: faceprep_detector is not a faceprep "
        "hook (the hooks: faceprep_aligners, faceprep_detectors, faceprep_fills); skipped"
    ]

    @hookimpl
    def faceprep_fills() -> list[StageSpec]:
        raise OSError("weights folder missing")

    assert plugins.register(types.SimpleNamespace(faceprep_fills=faceprep_fills), "raising") is True
    with pytest.warns(plugins.PluginLoadWarning) as caught:
        fills = plugins.stages("fill")
    assert "mirror-blur" in fills
    assert [str(w.message) for w in caught] == [
        "faceprep: plugin 'raising' (registered as 'raising') failed to load: "
        "faceprep_fills() raised OSError: weights folder missing; skipped"
    ]
    assert [f.name for f in plugins.load_failures()] == ["empty", "typo", "raising"]


# ----------------------------------------------------------------------------- public plugin API


def test_hookimpl_and_stagespec_importable_from_package_without_heavy_imports() -> None:
    code = (
        "import sys, faceprep\n"
        "assert 'pluggy' not in sys.modules, 'import faceprep loaded pluggy'\n"
        "from faceprep import StageSpec, hookimpl\n"
        "import faceprep.hookspecs as h\n"
        "assert hookimpl is h.hookimpl and StageSpec is h.StageSpec\n"
        "heavy = {'torch', 'onnxruntime', 'PIL', 'numpy', 'cv2'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_package_hookimpl_registers_a_stage(fresh_manager: None) -> None:
    from faceprep import StageSpec as PackageStageSpec
    from faceprep import hookimpl as package_hookimpl

    @package_hookimpl
    def faceprep_fills() -> list[StageSpec]:
        return [PackageStageSpec("pkg-grey", GreyFill, "registered with faceprep.hookimpl")]

    assert plugins.register(types.SimpleNamespace(faceprep_fills=faceprep_fills), "pkg") is True
    assert isinstance(plugins.create("fill", "pkg-grey"), GreyFill)


class NoThreadsDetector:
    def __init__(self, model: str | None = None) -> None:
        self.model = model

    def detect(self, image: object) -> list[object]:
        return []


class KwargsDetector(NoThreadsDetector):
    def __init__(self, **options: object) -> None:
        self.options = options


@hookimpl
def _option_detectors() -> list[StageSpec]:
    return [
        StageSpec("test-nothreads", NoThreadsDetector, "no num_threads"),
        StageSpec("test-kwargs", KwargsDetector, "takes anything"),
    ]


def test_accepts_option_reads_factory_signatures(fresh_manager: None) -> None:
    plugins.register(types.SimpleNamespace(faceprep_detectors=_option_detectors), "test-options")
    assert plugins.accepts_option("detector", "scrfd", "num_threads") is True
    assert plugins.accepts_option("detector", "test-nothreads", "num_threads") is False
    assert plugins.accepts_option("detector", "test-nothreads", "model") is True
    assert plugins.accepts_option("detector", "test-kwargs", "num_threads") is True
    assert plugins.accepts_option("aligner", "ffhq", "scale") is True
    assert plugins.accepts_option("fill", "mirror-blur", "value") is False
    assert plugins.accepts_option("fill", "constant", "value") is True
    with pytest.raises(plugins.UnknownStageError, match="unknown detector 'nope'"):
        plugins.accepts_option("detector", "nope", "num_threads")
