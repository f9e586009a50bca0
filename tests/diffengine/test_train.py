"""The training loop on real faces: a tiny model overfits, the loop writes its artefacts, bad data
stops it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from diffengine.data import DataCheckError, load_dataset, to_model_range
from diffengine.doctor import overfit_one_batch
from diffengine.generate import build_denoiser, load_run
from diffengine.loss import diffusion_loss
from diffengine.precond import Denoiser
from diffengine.train import TrainConfig, effective_preset, learning_rate, resolve_precision, train

TinyConfig = Callable[..., TrainConfig]


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_tiny_model_overfits_real_faces(faces: Path, tiny_config: TinyConfig) -> None:
    x = to_model_range(load_dataset(faces, 16)[0])
    torch.manual_seed(0)
    denoiser = build_denoiser(effective_preset(tiny_config(faces, Path("unused"))))
    factor, losses = overfit_one_batch(denoiser, x, steps=200, target_factor=20)
    assert factor >= 10, f"loss only fell {factor:.1f}x: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert losses[0] > 0.3  # the zero-initialised output starts at the EDM loss scale (~1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_train_loop_learns_and_writes_artefacts(faces: Path, tmp_path: Path, tiny_config: TinyConfig) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(
        faces,
        out,
        max_steps=120,
        batch_size=8,
        lr=2e-3,
        warmup=10,
        log_every=20,
        sample_every=60,
        ckpt_every=60,
        keep=1,
    )
    result = train(cfg)
    assert result.step == 120 and not result.interrupted
    # Artefacts: one kept checkpoint, preview grids, log with σ buckets, loss plot.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000120"]
    assert (out / "checkpoints" / "latest").read_text() == "step_00000120"
    for name in ("step_00000060.png", "step_00000120.png", "latest.png"):
        assert (out / "samples" / name).stat().st_size > 100
    assert (out / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60, 80, 100, 120]
    assert len(records[0]["sigma_edges"]) == 9 and len(records[0]["sigma_loss"]) == 8
    assert all(r["images_per_s"] > 0 for r in records)
    # The model learned: loss at fixed σ and noise on the training faces fell for the EMA weights.
    x = to_model_range(load_dataset(faces, 16)[0])

    def fixed_loss(denoiser: Denoiser) -> float:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(
                diffusion_loss(
                    denoiser, x, sigma=torch.tensor([0.2, 0.5, 1.0, 2.0]).repeat(2), generator=g
                ).loss
            )

    before = fixed_loss(build_denoiser(effective_preset(cfg)))
    after = fixed_loss(load_run(out)[0])
    assert after < before / 2, (before, after)
    # A second run into the same folder without --resume is refused.
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_bad_batch_stops_training(
    faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_config: TinyConfig
) -> None:
    from diffengine import data

    original = data.BatchStream.next
    monkeypatch.setattr(
        data.BatchStream, "next", lambda self, device="cpu": (original(self, device) + 1) * 127.5
    )
    with pytest.raises(DataCheckError, match=r"\[0, 255\]"):
        train(tiny_config(faces, tmp_path / "run", max_steps=2))


def test_precision_policy_and_warmup() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("fp32", cpu) == torch.float32
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("half", cpu)
    assert (
        learning_rate(0, 1.0, 4) == 0.25
        and learning_rate(3, 1.0, 4) == 1.0
        and learning_rate(99, 1.0, 4) == 1.0
    )
    assert learning_rate(0, 0.5, 0) == 0.5


@pytest.mark.filterwarnings("ignore:.*only 8 images")
def test_ctrl_c_saves_a_checkpoint_and_stops(faces: Path, tmp_path: Path, tiny_config: TinyConfig) -> None:
    import os
    import signal

    def press_ctrl_c(denoiser: Denoiser, step: int) -> dict[str, float]:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # lands in the loop's handler: finish the step, save, stop
        return {"kid": float(step)}

    out = tmp_path / "run"
    result = train(tiny_config(faces, out, max_steps=50, kid_every=1), eval_fn=press_ctrl_c)
    assert result.interrupted and result.step == 2
    assert result.checkpoint == out / "checkpoints" / "step_00000002"
    assert (result.checkpoint / "model.safetensors").is_file()
    assert (out / "samples" / "latest.png").is_file()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"step": 1, "kid": 1.0} in records and {"step": 2, "kid": 2.0} in records
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
