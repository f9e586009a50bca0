"""Checkpoints: the layout, optimizer/RNG round trip and pruning; a kill at any instant of a save leaves
a complete one; a damaged newest checkpoint is skipped for the newest intact one (unit level and
through ``diffengine sample`` / ``train --resume``). The bit-exact resumed run is in test_train.py."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from diffengine import checkpoint as ckpt_mod
from diffengine.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    checkpoint_candidates,
    latest_checkpoint,
    load_checkpoint,
    recover,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)
from diffengine.cli import main


def test_rng_and_optimizer_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = rng_state()
    want = (torch.rand(3), random.random(), np.random.rand(2))
    set_rng_state(state)
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(want[0], got[0]) and want[1] == got[1] and np.array_equal(want[2], got[2])

    path = save_checkpoint(tmp_path, 7, net.state_dict(), {"rng": state}, optimizer=opt.state_dict(), keep=2)
    save_checkpoint(tmp_path, 8, net.state_dict(), {}, keep=2)
    save_checkpoint(tmp_path, 9, net.state_dict(), {}, keep=2)
    assert not path.exists()  # pruned: only the newest two remain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000008", "step_00000009"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000009"
    path = save_checkpoint(tmp_path, 10, net.state_dict(), {}, optimizer=opt.state_dict())
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 10 and ckpt.path == path and ckpt.ema is None
    assert set(load_file(str(path / "optimizer.safetensors"))) == {
        f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")
    }
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    assert ckpt.optimizer is not None
    opt2.load_state_dict(ckpt.optimizer)
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary leftovers


class Killed(BaseException):
    """The process died here: no ``except Exception`` cleanup runs, and nothing after it either."""


@contextlib.contextmanager
def killed_at(n: int) -> Iterator[dict[str, int]]:
    """Make the n-th filesystem step of a save (file write, rename, tree delete) and every later one
    raise ``Killed``; a killed ``rmtree`` first deletes one file (a half-deleted folder)."""
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree
    real_save_file, real_torch_save = ckpt_mod.save_file, torch.save

    def tick() -> None:
        calls["n"] += 1
        if calls["n"] >= n:
            raise Killed

    def replace(src: Any, dst: Any) -> None:
        tick()
        real_replace(src, dst)

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            if files:
                files[0].unlink()
        if calls["n"] >= n:
            raise Killed
        real_rmtree(path, *args, **kwargs)

    def save_file(*args: Any, **kwargs: Any) -> None:
        tick()
        real_save_file(*args, **kwargs)

    def torch_save(*args: Any, **kwargs: Any) -> None:
        tick()
        real_torch_save(*args, **kwargs)

    patches = [(os, "replace", replace), (shutil, "rmtree", rmtree), (ckpt_mod, "save_file", save_file)]
    patches.append((torch, "save", torch_save))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, fake in patches:
        setattr(obj, name, fake)
    try:
        yield calls
    finally:
        for obj, name, real in saved:
            setattr(obj, name, real)


def _save(root: Path, step: int, value: float, keep: int) -> Path:
    model = {"w": torch.full((4, 4), value), "b": torch.full((4,), value)}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    return save_checkpoint(
        root, step, model, {"value": value}, ema={"w": model["w"] * 2}, optimizer=opt.state_dict(), keep=keep
    )


def _assert_consistent(root: Path, allowed: dict[int, set[float]]) -> None:
    """A complete checkpoint loads without skipping anything, ``latest`` names it, it holds one of the
    allowed (step, value) versions, and no ``step_*`` folder is partial."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # latest must resolve to an intact one
        ckpt = load_checkpoint(root)
    assert ckpt.step in allowed and ckpt.state["value"] in allowed[ckpt.step]
    assert torch.equal(ckpt.model["w"], torch.full((4, 4), ckpt.state["value"]))
    assert ckpt.ema is not None and ckpt.optimizer is not None
    pointer = (root / "latest").read_text().strip()
    assert ckpt.path.name == pointer or ckpt.path.name.startswith(f".old-{pointer}-")
    assert latest_checkpoint(root) == ckpt.path
    for folder in root.glob("step_*"):
        verify_checkpoint(folder)
        load_checkpoint(folder)


def _kill_everywhere(
    prepare: Callable[[Path], object],
    act: Callable[[Path], object],
    allowed: dict[int, set[float]],
    base: Path,
) -> int:
    """Run ``act`` killed at its 1st, 2nd, ... step until it completes; check the state after each kill,
    after a second save killed at every point too, and after a clean save. Returns the kill points."""
    n = 0
    while True:
        n += 1
        root = base / f"kill{n}"
        prepare(root)
        with killed_at(n) as calls:
            try:
                act(root)
            except Killed:
                pass
            else:
                assert calls["n"] < n
                return n - 1
        _assert_consistent(root, allowed)
        for m in range(1, 30):  # the next save is killed too, at each of its points
            again = base / f"kill{n}-{m}"
            shutil.copytree(root, again)
            with killed_at(m):
                try:
                    act(again)
                except Killed:
                    pass
                else:
                    break
            _assert_consistent(again, allowed)
        _save(root, 99, 99.0, keep=2)  # a clean save afterwards tidies every leftover
        assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
        assert latest_checkpoint(root) == root / "step_00000099"


def test_resave_of_the_same_step_survives_a_kill_anywhere(tmp_path: Path) -> None:
    """The only checkpoint (step 5) is written again: at every instant a complete step 5, old or new,
    is loadable and ``latest`` resolves to it (the old code deleted it before renaming the new one in)."""
    points = _kill_everywhere(
        prepare=lambda root: _save(root, 5, 5.0, keep=1),
        act=lambda root: _save(root, 5, 55.0, keep=1),
        allowed={5: {5.0, 55.0}},
        base=tmp_path,
    )
    assert points >= 6  # 4 file writes, the renames and the deletion were all tried


def test_new_step_and_pruning_survive_a_kill_anywhere(tmp_path: Path) -> None:
    def prepare(root: Path) -> None:
        _save(root, 4, 4.0, keep=2)
        _save(root, 5, 5.0, keep=2)

    points = _kill_everywhere(
        prepare, lambda root: _save(root, 6, 6.0, keep=2), {5: {5.0}, 6: {6.0}}, tmp_path
    )
    assert points >= 7


def test_a_failed_resave_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ordinary error (not a kill) between moving the old folder aside and renaming the new one in
    restores the old folder and removes the temporary one."""
    _save(tmp_path, 5, 5.0, keep=1)
    real = os.replace

    def failing(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".tmp-") and Path(dst).name == "step_00000005":
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        _save(tmp_path, 5, 55.0, keep=1)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000005"]
    assert load_checkpoint(tmp_path).state["value"] == 5.0


def test_aside_copy_is_used_and_then_recovered(tmp_path: Path) -> None:
    """A save killed right after moving the old folder aside: readers use the aside copy; ``recover``
    (run by the next save and when training opens the run) renames it back and removes the litter."""
    _save(tmp_path, 5, 5.0, keep=1)
    os.replace(tmp_path / "step_00000005", tmp_path / ".old-step_00000005-deadbeef")
    (tmp_path / ".tmp-half").mkdir()
    (tmp_path / ".tmp-half" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".tmp-pointer").write_text("step_")
    assert latest_checkpoint(tmp_path) == tmp_path / ".old-step_00000005-deadbeef"
    assert load_checkpoint(tmp_path).state["value"] == 5.0
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000005"]
    assert load_checkpoint(tmp_path).state["value"] == 5.0


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, float(step), keep=3)
    _truncate(tmp_path / "step_00000003" / "model.safetensors")
    (tmp_path / "step_00000002" / "state.pt").write_bytes(os.urandom(200))
    for tensors in (True, False):
        with pytest.warns(CheckpointWarning) as record:
            ckpt = load_checkpoint(tmp_path, tensors=tensors)
        assert ckpt.step == 1 and ckpt.path == tmp_path / "step_00000001"
        (message,) = [str(w.message) for w in record]
        assert "\n" not in message
        assert str(tmp_path / "step_00000003" / "model.safetensors") in message
        assert str(tmp_path / "step_00000002") + ": state.pt is unreadable" in message
        assert message.endswith(f"using {tmp_path / 'step_00000001'}")
    # Naming a damaged folder itself: an error, not a silent substitute.
    with pytest.raises(CheckpointError, match=r"step_00000003/model\.safetensors: unreadable"):
        load_checkpoint(tmp_path / "step_00000003")
    # Nothing intact: one error naming each damaged one.
    (tmp_path / "step_00000001" / "ema.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{tmp_path}: no intact checkpoint (")
    assert all(f"step_0000000{i}" in text for i in (1, 2, 3))
    # A re-save over a damaged step replaces it; pruning never removes the checkpoint just written.
    _save(tmp_path, 2, 2.5, keep=1)
    assert load_checkpoint(tmp_path).state["value"] == 2.5
    assert checkpoint_candidates(tmp_path)[0] == tmp_path / "step_00000002"


# ---------------------------------------------------------------------------------------------------
# Through the CLI


@pytest.fixture(scope="module")
def noise_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight random 20x20 images (no shared data needed)."""
    folder = tmp_path_factory.mktemp("noise")
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = torch.randint(0, 256, (20, 20, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def two_step_run(
    noise_images: Path, tmp_path_factory: pytest.TempPathFactory, tiny_cli_args: list[str]
) -> Path:
    """A run trained 2 steps with a checkpoint at each (step_00000001, step_00000002)."""
    run = tmp_path_factory.mktemp("run") / "run"
    args = [
        "train",
        str(noise_images),
        "--out",
        str(run),
        *tiny_cli_args,
        "--ckpt-every",
        "1",
        "--max-steps",
        "2",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only 8 images"
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000001", "step_00000002"]
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_cli_sample_and_resume_skip_a_damaged_newest_checkpoint(
    two_step_run: Path, noise_images: Path, tmp_path: Path, tiny_cli_args: list[str]
) -> None:
    run = _copy(two_step_run, tmp_path)
    ckpts = run / "checkpoints"
    _truncate(ckpts / "step_00000002" / "ema.safetensors")
    (ckpts / ".tmp-killed").mkdir()  # what a killed save leaves
    (ckpts / ".tmp-killed" / "model.safetensors").write_bytes(b"half")
    runner = CliRunner()
    grid = tmp_path / "grid.png"
    result = runner.invoke(
        main, ["sample", str(run), "--n", "1", "--steps", "2", "--sampler", "euler", "--out", str(grid)]
    )
    assert result.exit_code == 0, result.output
    assert grid.is_file()
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and str(ckpts / "step_00000002" / "ema.safetensors") in warning[0]
    assert warning[0].endswith(f"using {ckpts / 'step_00000001'}")
    assert "Traceback" not in result.output

    result = runner.invoke(
        main,
        [
            "train",
            str(noise_images),
            "--out",
            str(run),
            *tiny_cli_args,
            "--max-steps",
            "3",
            "--resume",
            "--ckpt-every",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"resumed from {ckpts / 'step_00000001'} at step 1" in result.output
    assert "Warning: skipped damaged checkpoint(s): " in result.stderr
    assert not (ckpts / ".tmp-killed").exists()  # tidied when training opened the run
    assert load_checkpoint(ckpts).step == 3
    # Step 2 was trained again and written over the damaged copy.
    assert load_checkpoint(ckpts / "step_00000002").step == 2


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_cli_errors_in_one_line_when_no_checkpoint_is_intact(
    two_step_run: Path, noise_images: Path, tmp_path: Path, tiny_cli_args: list[str]
) -> None:
    run = _copy(two_step_run, tmp_path)
    ckpts = run / "checkpoints"
    (ckpts / "step_00000002" / "state.pt").write_bytes(b"garbage")
    _truncate(ckpts / "step_00000001" / "model.safetensors")
    runner = CliRunner()
    for args in (
        ["sample", str(run), "--n", "1", "--steps", "2"],
        ["train", str(noise_images), "--out", str(run), *tiny_cli_args, "--max-steps", "3", "--resume"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit)  # a clean click error, no traceback
        (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
        assert line.startswith(f"Error: {ckpts}: no intact checkpoint (")
        assert "step_00000002: state.pt is unreadable" in line and "step_00000001/model.safetensors" in line
