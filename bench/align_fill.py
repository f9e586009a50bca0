"""Align + fill + resample: faceprep's ``extract_face`` against the FFHQ recipe, measured in one run.

The baseline is a straightforward re-implementation of ``recreate_aligned_images`` from NVlabs'
ffhq-dataset ``download_ffhq.py``: Lanczos shrink, crop, reflect pad + scipy Gaussian blur + numpy fade
mask, PIL QUAD transform (bilinear) to 4096 px, Lanczos resize to the output size. Both get the same
quad (faceprep.geometry.ffhq_quad) and run single-threaded.

Faces: (a) SCRFD detections on the shared portraits (large faces: the downscaling case), (b) the dlib
group photos' 68-point ground truth (small faces: the upscaling case). Prints median ms per face for
both, the ratio, PSNR/SSIM of ours against the recipe's output (whole crop and the part taken from
inside the photo), and writes a side-by-side PNG (recipe | ours | 4×|difference|) to bench/results/.

    PYTHONPATH=. python bench/align_fill.py [--shared ../shared] [--faces 8] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from kornia.metrics import ssim
from PIL import Image

from faceprep import plugins
from faceprep.geometry import ffhq_quad, output_to_source
from faceprep.types import FloatArray, ImageArray, Quad
from faceprep.warp import extract_face

ROOT = Path(__file__).resolve().parents[1]
ZOOM_OUT = 1.8
PORTRAITS = ("face_recognition/examples", "insightface", "facenet_pytorch", "scrfd_repo")


def ffhq_recipe(img: Image.Image, quad: Quad, output_size: int, transform_size: int = 4096) -> ImageArray:
    """The FFHQ script's shrink / crop / pad+blur / transform / downsample, for a given quad."""
    q = quad.corners.copy()
    qsize = quad.side
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        q /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(q.min(axis=0)).astype(int), np.ceil(q.max(axis=0)).astype(int)
    crop = (
        max(int(lo[0]) - border, 0),
        max(int(lo[1]) - border, 0),
        min(int(hi[0]) + border, img.size[0]),
        min(int(hi[1]) + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        q -= crop[0:2]
    lo, hi = np.floor(q.min(axis=0)).astype(int), np.ceil(q.max(axis=0)).astype(int)
    pad = [max(-lo[0] + border, 0), max(-lo[1] + border, 0)]
    pad += [max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0)]
    if max(pad) > border - 4:
        pad = list(np.maximum(pad, int(np.rint(qsize * 0.3))))
        arr = np.pad(
            np.asarray(img, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect"
        )
        h, w, _ = arr.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
            1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(
            mask * 3.0 + 1.0, 0.0, 1.0
        )
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        q += pad[:2]
    img = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        tuple((q + 0.5).flatten()),
        Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return np.asarray(img)


@dataclass(frozen=True)
class Row:
    set: str
    face: str
    side: float
    filled: float
    recipe_ms: float
    ours_ms: float
    psnr: float
    psnr_inside: float
    ssim: float


def five_from_68(lm: FloatArray) -> FloatArray:
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def dlib_faces(shared: Path, limit: int) -> list[tuple[str, ImageArray, Quad]]:
    """Faces from the dlib XML ground truth (68 points each), largest first."""
    folder = shared / "photos" / "dlib_faces"
    faces = []
    for xml in sorted(folder.glob("*_with_face_landmarks.xml")):
        for image in ET.parse(xml).getroot().iter("image"):
            path = folder / image.attrib["file"]
            for box in image.iter("box"):
                parts = sorted(box.iter("part"), key=lambda p: int(p.attrib["name"]))
                if len(parts) != 68:
                    continue
                lm = np.array([[float(p.attrib["x"]), float(p.attrib["y"])] for p in parts])
                faces.append((path, ffhq_quad(five_from_68(lm))))
    faces.sort(key=lambda f: -f[1].side)
    out: list[tuple[str, ImageArray, Quad]] = []
    for path, quad in faces[:limit]:
        out.append((f"{path.name}", np.asarray(Image.open(path).convert("RGB")), quad))
    return out


def scrfd_faces(shared: Path, limit: int) -> list[tuple[str, ImageArray, Quad]]:
    """The best SCRFD face of each shared portrait / group photo (the large-face case)."""
    model = os.environ.get("FACEPREP_SCRFD_MODEL", str(shared / "models" / "scrfd.onnx"))
    detector = plugins.create("detector", "scrfd", model=model, num_threads=1)
    out: list[tuple[str, ImageArray, Quad]] = []
    for sub in PORTRAITS:
        for path in sorted((shared / "photos" / sub).glob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or len(out) >= limit:
                continue
            image = np.asarray(Image.open(path).convert("RGB"))
            dets = detector.detect(image)
            if dets:
                out.append((f"{sub.split('/')[0]}/{path.name}", image, ffhq_quad(dets[0].landmarks)))
    return out


def inside_mask(quad: Quad, size: int, shape: tuple[int, ...]) -> np.ndarray:
    """Output pixels whose source lies inside the photo, eroded by 8 px (away from the fill seam)."""
    a = output_to_source(quad, size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    x = a[0, 0] * u + a[0, 1] * v + a[0, 2]
    y = a[1, 0] * u + a[1, 1] * v + a[1, 2]
    margin = 8 * quad.side / size
    return (x > margin) & (x < shape[1] - 1 - margin) & (y > margin) & (y < shape[0] - 1 - margin)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = float(d[mask].mean() if mask is not None else d.mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def ssim_of(a: np.ndarray, b: np.ndarray) -> float:
    ta = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255
    tb = torch.from_numpy(np.array(b)).permute(2, 0, 1)[None].float() / 255
    return float(ssim(ta, tb, 11).mean())


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("FACEPREP_SHARED", ROOT.parent / "shared"))
    )
    ap.add_argument("--faces", type=int, default=8, help="faces per set")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for ours (best of); recipe: 1")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "align_fill.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fill = plugins.create("fill", "mirror-blur")

    portraits = scrfd_faces(args.shared, args.faces)
    zoomed = [(n, im, Quad((q.corners - q.center) * ZOOM_OUT + q.center)) for n, im, q in portraits]
    sets = {
        "portraits (SCRFD)": portraits,
        f"portraits x{ZOOM_OUT}": zoomed,  # quads leave the photo: exercises the mirror-blur fill
        "dlib 68-pt": dlib_faces(args.shared, args.faces),
    }
    rows: list[Row] = []
    tiles = []
    print(
        f"{'set':18} {'face':30} {'side':>5} {'filled':>6} {'recipe ms':>9} {'ours ms':>8} {'ratio':>6} ",
        end="",
    )
    print(f"{'PSNR':>6} {'PSNRin':>6} {'SSIM':>6}")
    for set_name, faces in sets.items():
        for name, image, quad in faces:
            extract_face(image, quad, args.size, fill)  # warm-up
            ours_ms = timed(partial(extract_face, image, quad, args.size, fill), args.repeats)
            t0 = time.perf_counter()
            ref = ffhq_recipe(Image.fromarray(image), quad, args.size)
            recipe_ms = (time.perf_counter() - t0) * 1000
            ours, frac = extract_face(image, quad, args.size, fill)
            inside = inside_mask(quad, args.size, image.shape)
            r = Row(
                set_name,
                name,
                quad.side,
                frac,
                recipe_ms,
                ours_ms,
                psnr(ours, ref),
                psnr(ours, ref, inside),
                ssim_of(ours, ref),
            )
            rows.append(r)
            print(
                f"{r.set:18} {r.face[:30]:30} {r.side:5.0f} {r.filled:6.2f} "
                f"{r.recipe_ms:9.1f} {r.ours_ms:8.1f} ",
                end="",
            )
            print(f"{r.recipe_ms / r.ours_ms:6.1f} {r.psnr:6.2f} {r.psnr_inside:6.2f} {r.ssim:6.3f}")
            diff = np.clip(np.abs(ours.astype(np.int16) - ref.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
            tiles.append(np.concatenate([ref, ours, diff], axis=1))

    print()
    for set_name in [*sets, "all"]:
        sel = [r for r in rows if set_name in ("all", r.set)]
        if not sel:
            continue
        rec = statistics.median(r.recipe_ms for r in sel)
        our = statistics.median(r.ours_ms for r in sel)
        q = [statistics.median(getattr(r, k) for r in sel) for k in ("psnr", "psnr_inside", "ssim")]
        print(
            f"{set_name:18} n={len(sel):2}  recipe {rec:7.1f} ms  ours {our:6.1f} ms  "
            f"ratio {rec / our:5.1f}x  ",
            end="",
        )
        print(f"PSNR {q[0]:5.2f} dB (inside {q[1]:5.2f})  SSIM {q[2]:.4f}  (medians, 1 thread)")
    picks = [tiles[i] for i in range(0, len(tiles), max(1, len(tiles) // 8))][:8]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(picks, axis=0)).save(args.out)
    print(f"side-by-side (recipe | ours | 4x diff): {args.out}")


if __name__ == "__main__":
    main()
