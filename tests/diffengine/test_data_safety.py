"""Training data that must be refused with a one-line error naming the file: metadata paths leaving the
dataset folder, zip entries with a bad CRC, decompression bombs and huge images, non-UTF-8 metadata."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffengine.cli import main
from diffengine.data import MAX_PIXELS, DataError, load_images, open_source
from faceprep.imageio import DEFAULT_MAX_PIXELS


def _png(seed: int = 0, size: int = 8) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img{i}.png").write_bytes(_png(i))
    return root


def _metadata(folder: Path, names: list[str]) -> Path:
    meta = folder / "metadata.jsonl"
    meta.write_text("".join(json.dumps({"file_name": n}) + "\n" for n in names))
    return meta


def _train(data: Path, tmp_path: Path) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(
        main, ["train", str(data), "--out", str(tmp_path / "run"), "--preset", "faces32", "--max-steps", "1"]
    )
    return result.exit_code, result.output, result.exception


def _assert_one_line_error(code: int, output: str, exc: BaseException | None, *parts: str) -> None:
    assert code == 1, output
    assert isinstance(exc, SystemExit)  # click's clean error, not a traceback
    (line,) = [x for x in output.splitlines() if x.startswith("Error:")]
    for part in parts:
        assert part in line, (part, line)


# ---------------------------------------------------------------------------------------------------
# Path traversal through metadata.jsonl


@pytest.mark.parametrize(
    "bad",
    [
        "../secret/x.png",
        "ABSOLUTE",
        "../../../../etc/passwd",
        "sub/../../secret/x.png",
        "link.png",
        "linkdir/x.png",
    ],
)
def test_metadata_names_must_stay_inside_the_dataset(tmp_path: Path, bad: str) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "x.png").write_bytes(_png(9))
    data = _folder(tmp_path / "data")
    (data / "sub").mkdir()
    (data / "link.png").symlink_to(secret / "x.png")
    (data / "linkdir").symlink_to(secret, target_is_directory=True)
    name = str(secret / "x.png") if bad == "ABSOLUTE" else bad
    meta = _metadata(data, ["img0.png", "img1.png", name])
    with pytest.raises(DataError) as err:
        open_source(data)
    assert str(err.value) == (f"{meta}:3: file_name {name!r} points outside the dataset folder {data}")
    code, output, exc = _train(data, tmp_path)
    _assert_one_line_error(code, output, exc, f"{meta}:3:", repr(name), "outside the dataset folder")


def test_metadata_names_inside_the_dataset_still_work(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    (data / "sub").mkdir()
    (data / "sub" / "a.png").write_bytes(_png(5))
    (data / "inner.png").symlink_to(data / "img0.png")  # a link that stays inside is fine
    _metadata(data, ["img1.png", "sub/a.png", "./img2.png", "sub/../img3.png", "inner.png"])
    source = open_source(data)
    assert source.names == ("img1.png", "sub/a.png", "./img2.png", "sub/../img3.png", "inner.png")
    assert load_images(source, 8).shape == (5, 3, 8, 8)


def test_non_utf8_metadata_names_the_file_and_line(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    meta = data / "metadata.jsonl"
    meta.write_bytes(b'{"file_name": "img0.png"}\n{"file_name": "caf\xe9.png"}\n')
    with pytest.raises(DataError, match="not UTF-8") as err:
        open_source(data)
    assert str(err.value) == f"{meta}:2: not UTF-8 text (byte 0xe9 at column 19)"
    code, output, exc = _train(data, tmp_path)
    _assert_one_line_error(code, output, exc, f"{meta}:2: not UTF-8 text")


# ---------------------------------------------------------------------------------------------------
# Zip with a bad CRC


def _zip_with_bad_crc(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(4):
            zf.writestr(f"img{i}.png", _png(i))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("img2.png")
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0xFF  # one flipped byte inside the stored PNG
    path.write_bytes(bytes(raw))
    return path


def test_zip_entry_with_a_bad_crc_is_a_clear_error(tmp_path: Path) -> None:
    archive = _zip_with_bad_crc(tmp_path / "faces.zip")
    source = open_source(archive)
    with pytest.raises(DataError) as err:
        load_images(source, 8)
    assert str(err.value).startswith(f"{archive}!img2.png: cannot read (Bad CRC-32")
    code, output, exc = _train(archive, tmp_path)
    _assert_one_line_error(code, output, exc, f"{archive}!img2.png", "Bad CRC-32")
    result = CliRunner().invoke(main, ["doctor", str(archive), "--out", str(tmp_path / "doc")])
    _assert_one_line_error(
        result.exit_code, result.output, result.exception, f"{archive}!img2.png", "Bad CRC"
    )


# ---------------------------------------------------------------------------------------------------
# Huge images and decompression bombs


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (its pixel data is for 8x8)."""
    data = bytearray(_png(0))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_pixel_limit_is_faceprep_s() -> None:
    assert MAX_PIXELS == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((10_000, 10_000), f"image too large (10000x10000 = 100000000 pixels > {DEFAULT_MAX_PIXELS}; "),
        ((30_000, 30_000), "decompression bomb refused"),  # over twice PIL's limit: PIL's own error
    ],
)
def test_huge_images_are_refused_before_decoding(
    tmp_path: Path, size: tuple[int, int], reason: str, recwarn: pytest.WarningsRecorder
) -> None:
    data = _folder(tmp_path / "data", 3)
    (data / "huge.png").write_bytes(_png_claiming(*size))
    with pytest.raises(DataError) as err:
        load_images(open_source(data), 8)
    assert str(err.value).startswith(f"{data / 'huge.png'}: {reason}")
    assert "\n" not in str(err.value)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    code, output, exc = _train(data, tmp_path)
    _assert_one_line_error(code, output, exc, str(data / "huge.png"), reason)


# ---------------------------------------------------------------------------------------------------
# The same refusals on the streaming path (decoded in DataLoader workers)


def _stream_all(path: Path, workers: int = 2) -> None:
    from diffengine.streaming import make_stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # only N images
        stream = make_stream(path, 8, 1, seed=0, split="all", streaming=True, workers=workers)
    for _ in range(stream.n_images):  # batch 1: one epoch reads every file
        stream.next()


def _one_line(err: pytest.ExceptionInfo[DataError], start: str) -> None:
    assert str(err.value).startswith(start), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_names_a_bad_crc_zip_entry(tmp_path: Path, workers: int) -> None:
    archive = _zip_with_bad_crc(tmp_path / "faces.zip")
    with pytest.raises(DataError) as err:
        _stream_all(archive, workers)
    _one_line(err, f"{archive}!img2.png: cannot read (Bad CRC-32")


def test_streaming_refuses_huge_and_constant_images(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", 3)
    (data / "huge.png").write_bytes(_png_claiming(10_000, 10_000))
    with pytest.raises(DataError) as err:
        _stream_all(data)
    _one_line(err, f"{data / 'huge.png'}: image too large (10000x10000")
    flat = _folder(tmp_path / "flat", 3)
    Image.new("RGB", (10, 10), (7, 7, 7)).save(flat / "grey.png")
    with pytest.raises(DataError, match=r"constant .*grey\.png"):
        _stream_all(flat)


def test_streaming_checks_metadata_like_memory(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    meta = _metadata(data, ["img0.png", "../secret.png"])
    with pytest.raises(DataError) as err:
        _stream_all(data)
    assert str(err.value) == f"{meta}:2: file_name '../secret.png' points outside the dataset folder {data}"
    meta.write_bytes(b'{"file_name": "img0.png"}\n{"file_name": "caf\xe9.png"}\n')
    with pytest.raises(DataError) as err:
        _stream_all(data)
    assert str(err.value) == f"{meta}:2: not UTF-8 text (byte 0xe9 at column 19)"


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_broken_shards_are_one_line_errors(tmp_path: Path, workers: int) -> None:
    good = [(f"{i:09d}.png", _png(i)) for i in range(4)]
    shards = tmp_path / "broken"
    shards.mkdir()
    shard = _tar(shards / "faces-000000.tar", [*good[:2], ("000000002.png", b"not a png"), good[3]])
    with pytest.raises(DataError) as err:
        _stream_all(shards, workers)
    _one_line(err, f"{shard}!000000002.png: cannot read image")

    meta = tmp_path / "meta"
    meta.mkdir()
    bad_json = _tar(meta / "faces-000000.tar", [*good, ("000000003.json", b'{"file_name": "caf\xe9"}')])
    from diffengine.streaming import make_stream

    with pytest.raises(DataError) as err:
        make_stream(meta, 8, 1, seed=0, split="train", workers=workers)
    _one_line(err, f"{bad_json}!000000003.json: not UTF-8 text (byte 0xe9)")

    cut = tmp_path / "cut"
    cut.mkdir()
    whole = _tar(tmp_path / "whole.tar", good).read_bytes()
    (cut / "faces-000000.tar").write_bytes(whole[:1500])  # truncated inside the first image
    with pytest.raises(DataError) as err:
        _stream_all(cut, workers)
    _one_line(
        err, f"{cut / 'faces-000000.tar'}: damaged or truncated tar shard (no valid header at byte 1024)"
    )
