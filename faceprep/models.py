"""Finding model weights: explicit path → environment variable → user cache → verified download.

The SCRFD detector's ONNX file is looked up in this order:

1. an explicit path (the CLI's ``--model`` option);
2. ``FACEPREP_SCRFD_MODEL``;
3. the user cache, ``$FACEPREP_CACHE`` or ``$XDG_CACHE_HOME/faceprep`` or ``~/.cache/faceprep``;
4. a download of ``SCRFD_URL`` into that cache, accepted only if its sha256 equals ``SCRFD_SHA256``
   (written to a temporary file in the cache folder, verified, then renamed into place, so a killed
   download never leaves a file that looks complete). ``FACEPREP_OFFLINE=1`` forbids the download.
   The network gets ``DOWNLOAD_TIMEOUT`` seconds to resolve the host, connect and send each block, so
   a machine without network fails fast; a failed download is not retried within the same process.

Every failure raises ``ModelUnavailableError`` with a short one-line reason, which ``auto`` stage
selection shows before falling back to another detector. A file that is found but cannot be loaded
(corrupt, truncated, another network) makes the detector raise ``InvalidModelError`` naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Downloader = Callable[[str, Path], None]
"""Writes the bytes at a URL to a local path (raises on any failure)."""

ENV_MODEL = "FACEPREP_SCRFD_MODEL"
ENV_CACHE = "FACEPREP_CACHE"
ENV_OFFLINE = "FACEPREP_OFFLINE"
DOWNLOAD_TIMEOUT = 10.0  # seconds for the DNS lookup, the connection and each block read


@dataclass(frozen=True)
class ModelSource:
    """Where a model file comes from when it is not on disk yet, and the digest it must have."""

    filename: str
    url: str
    sha256: str


# SCRFD-2.5GF with 5 keypoints (batch-norm variant), input 1x3x640x640. The digest pins the file this
# project is tested with (shared/models/scrfd.onnx); the upstream release asset is not verified to be
# byte-identical, in which case the download is refused (checksum mismatch) and ``auto`` falls back.
SCRFD = ModelSource(
    filename="scrfd_2.5g_bnkps.onnx",
    url="https://github.com/deepinsight/insightface/releases/download/v0.7/scrfd_2.5g_bnkps.onnx",
    sha256="9c162a817c7dd32d35d1f1c6ae6445032d6e73c6c5fe61d8b5b663ba8bc86b30",
)


class ModelUnavailableError(RuntimeError):
    """No usable model file could be found or fetched; the message is one line."""


class InvalidModelError(ValueError):
    """A model file exists but cannot be used (corrupt, truncated, or not the expected network).

    The message is one line: ``<path>: <reason>``. A ValueError, so the CLI reports a usage error.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(reason.split())[:300]
        super().__init__(f"{self.path}: {self.reason}")


def cache_dir() -> Path:
    """The user cache folder for downloaded weights (not created here)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "faceprep"


def downloads_allowed() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("1", "true", "yes")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lookup(host: str, timeout: float) -> None:
    """Resolve ``host`` within ``timeout`` seconds (``getaddrinfo`` itself has no timeout)."""
    failed: list[bool] = []

    def run() -> None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            failed.append(True)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer for {host} within {timeout:g} s")
    if failed:
        raise OSError(f"cannot resolve {host}")


def urllib_download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """The default downloader: stream ``url`` into ``dest`` with the standard library."""
    host = urllib.parse.urlsplit(url).hostname
    if host:
        _lookup(host, timeout)
    request = urllib.request.Request(url, headers={"User-Agent": "faceprep"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except urllib.error.URLError as exc:  # "<urlopen error ...>" → the reason alone
        raise OSError(f"{host}: {getattr(exc.reason, 'strerror', None) or exc.reason}") from exc
    except TimeoutError as exc:
        raise TimeoutError(f"{host}: no answer within {timeout:g} s") from exc


def fetch_verified(source: ModelSource, dest: Path, downloader: Downloader | None = None) -> Path:
    """Download ``source`` to ``dest`` through a temporary file; keep it only if the sha256 matches."""
    fetch = downloader or urllib_download
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            fetch(source.url, tmp)
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ModelUnavailableError(f"no model file and download failed: {reason}") from exc
        digest = sha256_file(tmp)
        if digest != source.sha256:
            raise ModelUnavailableError(
                f"no model file and the download's sha256 {digest[:16]}… is not the pinned "
                f"{source.sha256[:16]}…: refused"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


_FAILED_DOWNLOADS: dict[str, str] = {}  # url → reason: the real network is tried once per process


def resolve_model(
    source: ModelSource,
    explicit: str | os.PathLike[str] | None = None,
    *,
    env_var: str | None = None,
    download: bool | None = None,
    downloader: Downloader | None = None,
) -> Path:
    """The path of a usable model file (see the module docstring for the order).

    ``download``: None follows ``FACEPREP_OFFLINE``; False never downloads. ``downloader`` replaces
    the network fetch (tests pass a local fake).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ModelUnavailableError(f"model file {path} does not exist")
        return path
    if env_var and os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not path.is_file():
            raise ModelUnavailableError(f"{env_var}={path} does not exist")
        return path
    cached = cache_dir() / source.filename
    if cached.is_file() and _verified(cached, source.sha256):
        return cached
    allowed = downloads_allowed() if download is None else download
    if not allowed:
        what = (
            f"cached {cached} fails its checksum" if cached.is_file() else f"no model file in {cached.parent}"
        )
        raise ModelUnavailableError(f"{what} and downloads are off ({ENV_OFFLINE})")
    if downloader is None and source.url in _FAILED_DOWNLOADS:
        raise ModelUnavailableError(_FAILED_DOWNLOADS[source.url])
    try:
        return fetch_verified(source, cached, downloader)
    except ModelUnavailableError as exc:
        if downloader is None:
            _FAILED_DOWNLOADS[source.url] = str(exc)
        raise


_VERIFIED: dict[tuple[str, int, int], bool] = {}


def _verified(path: Path, sha256: str) -> bool:
    """Checksum a cached file once per process (keyed by path, size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path) == sha256
    return _VERIFIED[key]


def resolve_scrfd_model(
    explicit: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    downloader: Downloader | None = None,
) -> Path:
    """The SCRFD ONNX file: ``explicit`` → ``FACEPREP_SCRFD_MODEL`` → cache → verified download."""
    return resolve_model(SCRFD, explicit, env_var=ENV_MODEL, download=download, downloader=downloader)
