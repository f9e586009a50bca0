"""Data loading (folder, metadata.jsonl, zip), range checks and the deterministic batch stream."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffengine.data import (
    BatchStream,
    DataCheckError,
    DataError,
    check_batch,
    heldout_split,
    load_dataset,
    load_images,
    open_source,
    split_names,
    to_model_range,
)


def _write_images(folder: Path, n: int, size: tuple[int, int] = (40, 30)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_folder_recursive_resize_center_crop(tmp_path: Path) -> None:
    # Left third red, middle green, right third blue in a 60x20 image: the centre crop is all green.
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :20, 0] = 255
    img[:, 20:40, 1] = 200
    img[:, 40:, 2] = 255
    (tmp_path / "deep" / "er").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "deep" / "er" / "x.png")
    Image.fromarray(img[:, ::-1].copy()).save(tmp_path / "y.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(tmp_path)
    assert source.names == ("deep/er/x.png", "y.jpg")
    out = load_images(source, 8)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.uint8
    # Inner columns (away from the antialiasing filter's reach into the cropped-off thirds).
    assert out[0, 1, :, 2:6].float().mean() == pytest.approx(200, abs=1)
    assert out[0, 0, :, 2:6].max() <= 2 and out[0, 2, :, 2:6].max() <= 2
    assert out[1, 1, :, 2:6].float().mean() == pytest.approx(200, abs=6)  # JPEG


def test_metadata_jsonl_and_zip_give_same_pixels(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    paths = _write_images(folder, 4)
    (folder / "extra.png").write_bytes(paths[0].read_bytes())  # not listed: must be ignored
    listed = [p.relative_to(folder).as_posix() for p in paths[:3]]
    lines = [json.dumps({"file_name": n, "score": 0.9}) + "\n" for n in listed]
    (folder / "metadata.jsonl").write_text("".join(lines))
    src = open_source(folder)
    assert list(src.names) == listed
    zpath = tmp_path / "faces.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in listed:
            zf.write(folder / name, name)
        zf.writestr("readme.txt", "x")
    zsrc = open_source(zpath)
    assert sorted(zsrc.names) == sorted(listed)
    a = load_images(src, 16)
    b = load_images(zsrc, 16, names=listed)
    assert torch.equal(a, b)


def test_clear_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images"):
        open_source(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        load_images(open_source(bad), 8)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "metadata.jsonl").write_text('{"file_name": "gone.png"}\n')
    with pytest.raises(DataError, match="missing"):
        open_source(meta)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (10, 10), (7, 7, 7)).save(flat / "grey.png")
    with pytest.raises(DataError, match=r"constant .*grey\.png"):
        load_images(open_source(flat), 8)


def test_check_batch_catches_bad_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    good = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    assert check_batch(good) == []
    with pytest.raises(DataCheckError, match=r"\[0, 255\]"):
        check_batch(torch.randint(0, 256, (4, 3, 8, 8), generator=g).float())
    nan = good.clone()
    nan[2, 0, 3, 3] = float("nan")
    with pytest.raises(DataCheckError, match=r"NaN/Inf in image\(s\) \[2\]"):
        check_batch(nan)
    inf = good.clone()
    inf[1, 1, 1, 1] = float("inf")
    with pytest.raises(DataCheckError, match="NaN/Inf"):
        check_batch(inf)
    const = good.clone()
    const[3] = 0.25
    with pytest.raises(DataCheckError, match=r"constant image\(s\) \[3\]"):
        check_batch(const)
    notes = check_batch(torch.rand(4, 3, 8, 8, generator=g))  # [0, 1] data: allowed but suspicious
    assert len(notes) == 1 and "[0, 1]" in notes[0]


def test_heldout_split_is_fixed_and_disjoint() -> None:
    names = [f"dir/{i}_0_0_2017.jpg" for i in range(2000)]
    train, held = heldout_split(names, 0.1)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 2000
    assert 150 < len(held) < 250
    # Depends on the base name only, not the order or folder.
    _, held2 = heldout_split([n.replace("dir/", "other/") for n in reversed(names)], 0.1)
    assert sorted(h.split("/")[1] for h in held2) == sorted(h.split("/")[1] for h in held)


def test_split_names_picks_one_side_of_the_split() -> None:
    names = [f"{i}_1_0_2017.jpg" for i in range(500)]
    train, held = heldout_split(names, 0.2)
    assert split_names(names, "train", 0.2) == train
    assert split_names(names, "heldout", 0.2) == held
    assert split_names(names, "all", 0.2) == names
    with pytest.raises(ValueError, match="split must be"):
        split_names(names, "test", 0.2)


def test_batch_stream_shards_flips_and_resumes() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    images[:, :, :, 1] += 100  # left/right columns differ so flips are visible
    ranks = [BatchStream(images, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [ranks[r].next_indices()[0].tolist() for r in range(2)]
    assert set(seen[0]).isdisjoint(seen[1])
    stream = BatchStream(images, batch_size=3, seed=1)
    assert stream.n_images == 10
    flipped_any = False
    for _ in range(4):
        x = stream.next()
        assert x.shape == (3, 3, 2, 2) and x.min() >= -1 and x.max() <= 1
        flipped_any |= bool((x[:, :, :, 0] > x[:, :, :, 1]).any())
    assert flipped_any
    state = stream.state_dict()
    expected = [stream.next() for _ in range(5)]  # crosses an epoch boundary (10 // 3 = 3 per epoch)
    again = BatchStream(images, batch_size=3, seed=99)
    again.load_state_dict(state)
    for want in expected:
        assert torch.equal(again.next(), want)
    with pytest.raises(DataError, match="global batch"):
        BatchStream(images, batch_size=2, seed=1).load_state_dict(state)


def test_real_faces_load_in_range(shared_dir: Path, tmp_path: Path) -> None:
    folder = shared_dir / "data" / "utkface"
    source = open_source(folder)
    assert len(source.names) > 20000
    x = to_model_range(load_images(source, 16, source.names[:16]))
    assert check_batch(x) == []
    assert -1 <= float(x.min()) < -0.5 and 0.5 < float(x.max()) <= 1
    zpath = tmp_path / "three.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in source.names[:3]:
            zf.write(folder / name, name)
    with pytest.warns(UserWarning, match="only 3 images"):
        images, names = load_dataset(zpath, 8)
    assert images.shape == (3, 3, 8, 8) and names == list(source.names[:3])
