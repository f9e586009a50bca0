"""Plugin manager seen from the user's side: ``faceprep plugins``, names, clashes, third-party stages."""

from __future__ import annotations

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
