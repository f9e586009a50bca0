"""Two gloo processes under torchrun train a tiny model; both ranks end with identical parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from diffengine.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os, sys, torch
from safetensors.torch import save_file
from diffengine.train import TrainConfig, train
cfg = TrainConfig(**json.loads(sys.argv[1]))
result = train(cfg)
rank = int(os.environ["RANK"])
weights = {k: v.contiguous() for k, v in result.net.state_dict().items()}
save_file(weights, f"{cfg.out}/rank{rank}.safetensors")
# One file per rank: the two processes' stdout interleaves on the shared pipe.
with open(f"{cfg.out}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "step": result.step}, f)
"""


@pytest.mark.slow
def test_two_gloo_ranks_stay_identical(
    faces: Path, tmp_path: Path, tiny_train_kwargs: Callable[..., dict[str, Any]]
) -> None:
    out = tmp_path / "run"
    cfg = tiny_train_kwargs(
        faces,
        out=str(out),
        max_steps=3,
        batch_size=2,
        lr=1e-3,
        warmup=1,
        log_every=1,
        num_samples=2,
        device="cpu",
    )
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        json.dumps(cfg),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (0, 1):
        assert json.loads((out / f"rank{r}.json").read_text()) == {"rank": r, "world": 2, "step": 3}
    r0, r1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"{key} differs between ranks"
    # Rank 0 alone wrote the checkpoint; it holds the same weights and one data/RNG state per rank.
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000003"
    saved = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(saved[k], r0[k]) for k in r0)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert len(state["ranks"]) == 2
    # The ranks drew different noise (per-rank generators) and trained: weights left their zero init.
    assert not torch.equal(state["ranks"][0]["noise_gen"], state["ranks"][1]["noise_gen"])
    assert float(saved["conv_out.weight"].abs().sum()) > 0
    # Global batch 4 over 3 steps: 12 records in the EMA image count.
    assert state["ema"]["nimg"] == 12
