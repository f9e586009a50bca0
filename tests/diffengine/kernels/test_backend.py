"""The one backend predicate and its table, the dispatch of every public op, and GPU compilation of every
kernel."""

from __future__ import annotations

import importlib
import multiprocessing
import pathlib
from typing import Any

import pytest
import torch

import diffengine.kernels as K
from diffengine.kernels import AUTO, BackendUnavailableError, set_backend, use_triton
from diffengine.kernels._triton import Kernel, compile_for_gpu

OP_MODULES = ["group_norm", "attention", "precond_loss", "sampler_steps"]


def _call_every_op() -> None:
    x = torch.randn(2, 4, 3, 3)
    xg = x.clone().requires_grad_()
    K.group_norm_silu(
        xg, torch.ones(4), torch.zeros(4), 2, torch.zeros(2, 4), torch.zeros(2, 4)
    ).sum().backward()
    K.attention(*(torch.randn(1, 1, 5, 16, requires_grad=True) for _ in range(3))).sum().backward()
    K.precond_loss(xg, x, x, torch.ones(2), torch.ones(2), torch.ones(2)).sum().backward()
    K.euler_step(x, x, 2.0, 1.0)
    K.heun_correct(x, x, x, x, 2.0, 1.0)
    K.dpmpp2m_step(x, x, x, 2.0, 1.0, 3.0)
    K.weighted_sum((1.0, -0.5, 0.25), (x, x, x))


def _kernels() -> list[Kernel]:
    mods = [importlib.import_module(f"diffengine.kernels.{m}") for m in OP_MODULES]
    return [v for m in mods for v in vars(m).values() if isinstance(v, Kernel)]


def _forbid_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Kernel, grid: object) -> None:
        pytest.fail(f"{self.fn.__name__} launched although the reference should run")

    monkeypatch.setattr(Kernel, "__getitem__", boom)


def test_forced_triton_without_cuda_or_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    set_backend("triton")
    try:
        with pytest.raises(BackendUnavailableError, match="not CUDA"):
            use_triton(torch.ones(2))
        with pytest.raises(BackendUnavailableError):
            K.euler_step(torch.ones(2), torch.ones(2), 2.0, 1.0)
    finally:
        set_backend(None)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_torch_and_auto_on_cpu_run_the_reference(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even when the interpreter could run them
    monkeypatch.setenv("DIFFENGINE_KERNELS", backend)
    _forbid_kernels(monkeypatch)
    assert not use_triton(torch.ones(2))
    _call_every_op()


def test_every_op_has_one_auto_policy() -> None:
    """The table is the policy: measured on an H200, GroupNorm without gradients only, attention and the
    fused loss never, sampler steps without gradients (they have no backward)."""
    assert AUTO == {
        "group_norm_silu": "no_grad",
        "attention": "never",
        "precond_loss": "never",
        "sampler_steps": "no_grad",
    }
    for module in OP_MODULES:
        source = importlib.import_module(f"diffengine.kernels.{module}").__file__
        assert source is not None
        text = pathlib.Path(source).read_text()
        assert "op=" in text, f"{module} dispatches without naming its AUTO row"
        assert "os.environ" not in text and "get_backend" not in text, f"{module} has its own policy"


@pytest.mark.parametrize(("op", "grad", "expected"), [
    ("group_norm_silu", False, True), ("group_norm_silu", True, False),
    ("attention", False, False), ("precond_loss", False, False),
    ("sampler_steps", False, True), ("sampler_steps", True, False),
])  # fmt: skip
def test_auto_follows_the_table_on_a_capable_gpu(
    capable_gpu: None, op: str, grad: bool, expected: bool
) -> None:
    t = torch.ones(2, requires_grad=grad)
    assert use_triton(t, op=op) is expected
    set_backend("triton")
    try:
        assert use_triton(t, op=op)  # forced: the table does not apply
    finally:
        set_backend(None)


def test_env_values_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFENGINE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="DIFFENGINE_KERNELS"):
        use_triton(torch.ones(1))
    with pytest.raises(ValueError):
        bad: Any = "fast"  # not a Backend: the run-time check is what is tested
        set_backend(bad)


def test_unsupported_dtype_is_an_error_when_forced(triton_cpu: None) -> None:
    with pytest.raises(BackendUnavailableError, match="float64"):
        use_triton(torch.ones(2, dtype=torch.float64))


@pytest.mark.slow
def test_every_kernel_compiles_for_gpu(triton_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter accepts code the compiler rejects: compile each recorded launch to a cubin for
    sm_80 and sm_90 (no GPU needed) in a fresh process the interpreter never touched."""
    tl = pytest.importorskip("triton.language")
    _call_every_op()
    K.attention(*(torch.randn(1, 1, 5, 16, dtype=torch.bfloat16) for _ in range(3)))
    jobs = []
    for module in OP_MODULES:
        mod = importlib.import_module(f"diffengine.kernels.{module}")
        for name, kern in vars(mod).items():
            if isinstance(kern, Kernel):
                assert kern.last_launch is not None, f"{name} was not launched"
                kwargs = kern.last_launch[1]
                overrides = {"DOT_T": tl.bfloat16} if "DOT_T" in kwargs else {}
                jobs.append((mod.__name__, name, *kern.last_launch_signature(**overrides)))
                if "BACKWARD" in kwargs:  # one kernel for both passes: compile the pass not recorded too
                    other = {**overrides, "BACKWARD": not kwargs["BACKWARD"]}
                    jobs.append((mod.__name__, name, *kern.last_launch_signature(**other)))
    assert len(jobs) >= 9
    monkeypatch.delenv("TRITON_INTERPRET")  # the child must import triton in compile mode
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        sizes = pool.starmap(compile_for_gpu, [(*job, cap) for job in jobs for cap in (80, 90)])
    assert all(size > 1000 for size in sizes), sizes


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernels_match_reference() -> None:
    set_backend("triton")
    try:
        dev = torch.device("cuda")
        x = torch.randn(8, 128, 32, 32, device=dev)
        w, b = torch.randn(128, device=dev), torch.randn(128, device=dev)
        s, sh = torch.randn(8, 128, device=dev), torch.randn(8, 128, device=dev)
        from diffengine.kernels.group_norm import group_norm_silu_reference

        torch.testing.assert_close(
            K.group_norm_silu(x, w, b, 32, s, sh),
            group_norm_silu_reference(x, w, b, 32, s, sh),
            atol=1e-4,
            rtol=1e-4,
        )
        q, k, v = (torch.randn(4, 4, 1024, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
        from diffengine.kernels.attention import attention_reference

        torch.testing.assert_close(K.attention(q, k, v), attention_reference(q, k, v), atol=2e-2, rtol=2e-2)
    finally:
        set_backend(None)
