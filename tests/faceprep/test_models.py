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
    with pytest.raises(ModelUnavailableError, match=r"sha256 .* expected .*: refused"):
        resolve_model(SOURCE, downloader=_writer(b"tampered", calls))
    assert list((tmp_path / "cache").iterdir()) == []


def test_failed_download_cleans_up_and_reports(tmp_path: Path) -> None:
    def broken(url: str, dest: Path) -> None:
        dest.write_bytes(b"half")
        raise OSError("connection reset\nby peer")

    with pytest.raises(ModelUnavailableError, match="failed \\(connection reset by peer\\)") as info:
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
    with pytest.raises(ModelUnavailableError, match=r"not in the cache .* downloads are off"):
        resolve_model(SOURCE, downloader=_writer(PAYLOAD, []))


def test_scrfd_available_reports_one_line_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_OFFLINE", "1")
    reason = scrfd.available()
    assert reason is not None and reason.startswith("no SCRFD model:") and "\n" not in reason


def test_scrfd_available_with_shared_model(scrfd_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPREP_SCRFD_MODEL", str(scrfd_model))
    assert scrfd.available() is None
    assert models.sha256_file(scrfd_model) == models.SCRFD.sha256
