"""load_image / iter_images: modes, EXIF orientation, and every kind of bad input."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceprep import imageio
from faceprep.imageio import DEFAULT_MAX_PIXELS, iter_images, load_image
from faceprep.types import ImageLoadError


def _save(img: Image.Image, path: Path, **kw: Any) -> Path:
    img.save(path, **kw)
    return path


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.shape == (7, 11, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # A 4x2 image with a red left half; orientation 6 = "rotate 90° CW to display".
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, :2] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(_save(img, tmp_path / "o.png", exif=exif.tobytes()))
    assert out.shape == (4, 2, 3)
    # After a clockwise turn the former left half is on top.
    assert (out[:2, :, 0] == 255).all() and (out[2:, :, 0] == 0).all()


def test_grey_and_one_bit(tmp_path: Path) -> None:
    grey = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    out = load_image(_save(Image.fromarray(grey, "L"), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    out1 = load_image(_save(bits, tmp_path / "b.png"))
    np.testing.assert_array_equal(out1[:, :, 0], [[0, 255], [255, 0]])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    vals = np.array([[0, 257, 32896], [65535, 1000, 50000]], np.uint16)
    img = Image.fromarray(vals)  # mode I;16
    assert img.mode.startswith("I;16")
    out = load_image(_save(img, tmp_path / "h.png"))
    expected = np.rint(vals.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out[1, 0, 0] == 255 and out[0, 2, 0] == 128  # clipping would give 255 everywhere >255


def test_int32_and_float_modes(tmp_path: Path) -> None:
    wide = Image.fromarray(np.array([[-1000, 0], [500, 3000]], np.int32), "I")
    out = load_image(_save(wide, tmp_path / "i.tif"))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 64], [96, 255]])  # min-max stretch
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), "F")
    outf = load_image(_save(unit, tmp_path / "f.tif"))
    np.testing.assert_array_equal(outf[:, :, 0], [[0, 128], [255, 64]])


def test_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # transparent -> white
    rgba[1, 0] = (0, 0, 0, 128)  # half -> mid grey
    out = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    outla = load_image(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(outla[0, :, 0], [255, 50])


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = load_image(_save(pal, tmp_path / "p.png", transparency=1))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    out_gif = load_image(_save(pal, tmp_path / "p.gif"))
    assert tuple(out_gif[0, 1]) == (0, 0, 200)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(cmyk, tmp_path / "c.jpg", quality=95))
    r, g, b = (int(v) for v in out[4, 4])
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n" * 10, "not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a recognised image format"),
    ],
)
def test_bad_bytes(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    good = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "g.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:700])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(cut)


def test_corrupt_png_body(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = bytearray(
        _save(
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), tmp_path / "g.png"
        ).read_bytes()
    )
    data[200:260] = bytes(60)  # inside the IDAT chunk: CRC and zlib stream break
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(bad)


def test_missing_directory_and_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)
    locked = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root ignores permission bits: simulate the OS refusing

            def refuse(*_: object, **__: object) -> None:
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(imageio, "open", refuse, raising=False)
        with pytest.raises(ImageLoadError, match="permission denied"):
            load_image(locked)
    finally:
        locked.chmod(0o644)


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    big = _save(Image.new("L", (4000, 3000)), tmp_path / "big.png")  # tiny file, 12 MP
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(big, max_pixels=10_000_000)
    assert load_image(big, max_pixels=None).shape == (3000, 4000, 3)
    assert DEFAULT_MAX_PIXELS > 12_000_000


def test_pil_hard_bomb_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (100, 100)), tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 px > 2 x limit -> PIL refuses
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path, max_pixels=None)


def test_iter_images_sorted_recursive_filtered(tmp_path: Path) -> None:
    for rel in ["b/2.JPG", "b/1.png", "a.jpeg", "c/d/e.webp", "notes.txt", ".hidden/x.jpg", "b/._1.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "crop.png").write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_images(tmp_path, exclude=[tmp_path / "out"])]
    assert found == ["a.jpeg", "b/1.png", "b/2.JPG", "c/d/e.webp"]
    assert iter_images(tmp_path / "a.jpeg") == [tmp_path / "a.jpeg"]
    with pytest.raises(FileNotFoundError):
        iter_images(tmp_path / "missing")


def test_real_grayscale_photo(photos_dir: Path) -> None:
    out = load_image(photos_dir / "scrfd_repo" / "solvay_conference_1927.png")
    assert out.shape == (2171, 3000, 3) and out.dtype == np.uint8
    assert (out[:, :, 0] == out[:, :, 1]).all()
    assert sys.getrefcount(out) >= 1 and 20 < out.mean() < 235


def test_twelve_bit_data_in_sixteen_bit_png_keeps_its_brightness(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    twelve = rng.integers(0, 4096, size=(16, 24), dtype=np.uint16)
    twelve[0, 0] = 4095  # the sensor's full scale occurs (not required: any max <= 4095 is 12-bit)
    img = Image.fromarray(twelve)
    assert img.mode.startswith("I;16")
    out = load_image(_save(img, tmp_path / "twelve.png"))[:, :, 0].astype(np.float64)
    eight_bit = np.rint(twelve * (255.0 / 4095.0))
    assert abs(out.mean() - eight_bit.mean()) < 1.0 and np.abs(out - eight_bit).max() <= 1
    ten = np.array([[0, 512], [1023, 100]], np.uint16)  # 10-bit data
    out10 = load_image(_save(Image.fromarray(ten), tmp_path / "ten.png"))[:, :, 0]
    np.testing.assert_array_equal(out10, np.rint(ten * (255.0 / 1023.0)).astype(np.uint8))
    dark = np.array([[0, 5000], [4096, 300]], np.uint16)  # above 4095: 14-bit steps, not a stretch
    outd = load_image(_save(Image.fromarray(dark), tmp_path / "dark.png"))[:, :, 0]
    np.testing.assert_array_equal(outd, np.rint(dark * (255.0 / 16383.0)).astype(np.uint8))
    assert [imageio.data_full_scale(v) for v in (0, 255, 256, 4095, 4096, 65535)] == [
        255, 255, 1023, 4095, 16383, 65535,
    ]  # fmt: skip


def _avif_folder(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path / "photos"
    folder.mkdir(parents=True)
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :24] = (200, 40, 40)
    Image.fromarray(arr).save(folder / "a.avif", quality=95)
    Image.fromarray(arr).save(folder / "b.png")
    return folder, folder / "a.avif", arr


@pytest.mark.skipif(imageio.format_unsupported("AVIF") is not None, reason="this Pillow has no AVIF codec")
def test_avif_read_alone_and_found_in_folders(tmp_path: Path) -> None:
    folder, avif, arr = _avif_folder(tmp_path)
    assert ".avif" in imageio.IMAGE_EXTENSIONS
    assert iter_images(folder) == [avif, folder / "b.png"]
    assert iter_images(avif) == [avif]
    alone, found = load_image(iter_images(avif)[0]), load_image(iter_images(folder)[0])
    np.testing.assert_array_equal(alone, found)
    assert alone.shape == (32, 48, 3) and np.abs(alone.astype(int) - arr).mean() < 8


def test_unsupported_format_refused_the_same_way_alone_and_in_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    (folder / "notes.txt").write_text("x")
    heic = folder / "phone.HEIC"
    assert iter_images(folder) == [heic] and iter_images(heic) == [heic]  # found, to be reported
    reason = imageio.UNSUPPORTED_EXTENSIONS[".heic"]
    assert reason.startswith("HEIF image not supported: ")
    with pytest.raises(ImageLoadError) as exc:
        load_image(iter_images(folder)[0])
    assert exc.value.reason == reason
    # AVIF on a Pillow without the codec: same rule, found in the folder and refused with the reason
    from PIL import AvifImagePlugin, features

    if imageio.format_unsupported("AVIF") is None:
        avif = _avif_folder(tmp_path / "avif")[1]
        (avif.parent / "b.png").unlink()
    else:
        avif = tmp_path / "avif" / "a.avif"
        avif.parent.mkdir()
        avif.write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf")
    real_check = features.check
    monkeypatch.setattr(features, "check", lambda f: False if f == "avif" else real_check(f))
    monkeypatch.setattr(AvifImagePlugin, "SUPPORTED", False)
    supported, unsupported = imageio._support_tables()
    monkeypatch.setattr(imageio, "IMAGE_EXTENSIONS", supported)
    monkeypatch.setattr(imageio, "UNSUPPORTED_EXTENSIONS", unsupported)
    assert ".avif" not in supported and iter_images(avif.parent) == [avif] == iter_images(avif)
    with pytest.raises(ImageLoadError) as exc:
        load_image(avif)
    assert exc.value.reason == "AVIF image not supported: this Pillow has no AVIF decoder " + (
        "(Pillow >= 11.3 built with libavif reads it)"
    )
