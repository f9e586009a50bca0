"""Model resolution order and the verified download, with a local fake downloader (never the network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from faceprep import models
from faceprep.builtin import scrfd
from faceprep.models import ModelSource, ModelUnavailableError, fetch_verified, resolve_model

PAYLOAD = b"pretend onnx bytes" * 100
SOURCE = ModelSource("fake.onnx", "https://example.invalid/fake.onnx", hashlib.sha256(PAYLOAD).hexdigest())


def _writer(payload: bytes, calls: list[str]) -> models.Downloader:
    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        dest.write_bytes(payload)

    return fetch


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEPREP_SCRFD_MODEL", raising=False)
    monkeypatch.delenv("FACEPREP_OFFLINE", raising=False)
    monkeypatch.setattr(models, "urllib_download", _no_network)


def _no_network(url: str, dest: Path) -> None:
    raise AssertionError(f"test tried the network: {url}")


def test_order_explicit_then_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "a.onnx", tmp_path / "b.onnx"
    explicit.write_bytes(b"a")
    env.write_bytes(b"b")
    monkeypatch.setenv("FACEPREP_FAKE_MODEL", str(env))
    assert resolve_model(SOURCE, explicit, env_var="FACEPREP_FAKE_MODEL") == explicit
    assert resolve_model(SOURCE, None, env_var="FACEPREP_FAKE_MODEL") == env
    monkeypatch.delenv("FACEPREP_FAKE_MODEL")
    cached = tmp_path / "cache" / "fake.onnx"
    cached.parent.mkdir()
    cached.write_bytes(PAYLOAD)
    assert resolve_model(SOURCE, None, env_var="FACEPREP_FAKE_MODEL", download=False) == cached


def test_missing_explicit_or_env_path_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model(SOURCE, tmp_path / "nope.onnx")
    monkeypatch.setenv("FACEPREP_FAKE_MODEL", str(tmp_path / "gone.onnx"))
    with pytest.raises(ModelUnavailableError, match=r"FACEPREP_FAKE_MODEL=.*does not exist"):
        resolve_model(SOURCE, env_var="FACEPREP_FAKE_MODEL")


def test_download_success_is_atomic_and_cached(tmp_path: Path) -> None:
    calls: list[str] = []
    path = resolve_model(SOURCE, downloader=_writer(PAYLOAD, calls))
    assert path == tmp_path / "cache" / "fake.onnx" and path.read_bytes() == PAYLOAD
    assert calls == [SOURCE.url]
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.onnx"]  # no temp file left
    assert resolve_model(SOURCE, downloader=_writer(PAYLOAD, calls)) == path
    assert len(calls) == 1  # second call served from the cache


def test_checksum_mismatch_refuses_and_cleans_up(tmp_path: Path) -> None:
    calls: list[str] = []
    with pytest.raises(ModelUnavailableError, match=r"sha256 .* is not the pinned .*: refused"):
        resolve_model(SOURCE, downloader=_writer(b"tampered", calls))
    assert list((tmp_path / "cache").iterdir()) == []


def test_failed_download_cleans_up_and_reports(tmp_path: Path) -> None:
    def broken(url: str, dest: Path) -> None:
        dest.write_bytes(b"half")
        raise OSError("connection reset\nby peer")

    with pytest.raises(ModelUnavailableError, match=r"download failed: connection reset by peer$") as info:
        fetch_verified(SOURCE, tmp_path / "cache" / "x.onnx", broken)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_cache_is_redownloaded(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "fake.onnx"
    cached.parent.mkdir()
    cached.write_bytes(b"bit rot")
    calls: list[str] = []
    assert resolve_model(SOURCE, downloader=_writer(PAYLOAD, calls)).read_bytes() == PAYLOAD
    assert calls == [SOURCE.url]


def test_offline_mode_forbids_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_OFFLINE", "1")
    calls: list[str] = []
    with pytest.raises(
        ModelUnavailableError, match=r"^no model file in .*cache and downloads are off \(FACEPREP_OFFLINE\)$"
    ):
        resolve_model(SOURCE, downloader=_writer(PAYLOAD, calls))
    assert calls == []  # not even tried


def test_scrfd_available_reports_one_line_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_OFFLINE", "1")
    reason = scrfd.available()
    assert reason is not None and "\n" not in reason
    assert reason.startswith("no model file in ") and reason.endswith("; set FACEPREP_SCRFD_MODEL or --model")


def test_real_download_failure_is_short_and_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def unreachable(url: str, dest: Path) -> None:
        calls.append(url)
        raise OSError("cannot resolve example.invalid")

    monkeypatch.setattr(models, "urllib_download", unreachable)
    monkeypatch.setattr(models, "_FAILED_DOWNLOADS", {})
    for _ in range(2):
        with pytest.raises(ModelUnavailableError) as info:
            resolve_model(SOURCE)
        assert str(info.value) == "no model file and download failed: cannot resolve example.invalid"
    assert calls == [SOURCE.url]  # the second resolution (e.g. `auto` after `plugins`) did not wait again


def test_lookup_gives_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(5))
    try:
        with pytest.raises(TimeoutError, match=r"no answer for example.invalid within 0.05 s"):
            models._lookup("example.invalid", 0.05)
    finally:
        release.set()
    assert models.DOWNLOAD_TIMEOUT <= 10


def test_scrfd_available_with_shared_model(scrfd_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_SCRFD_MODEL", str(scrfd_model))
    assert scrfd.available() is None
    assert models.sha256_file(scrfd_model) == models.SCRFD.sha256
