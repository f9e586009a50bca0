"""How good is each fill where the truth is known? constant / edge / reflect / mirror-blur / generated.

Faces whose crop lies wholly inside its photo give the truth. Each "photo" is a held-out UTKFace image
(the 5 % hash split ``diffengine train --holdout 0.05`` keeps out of training); the crop is an FFHQ-like
oriented square inside it (side 75-95 % of the photo, roll up to ±12°). Out-of-photo regions are then
made the way they arise: the photo is cut along 1-3 of its edges (bands, corners, L shapes; tilted in
the crop whenever the face is rolled) until the crop's filled fraction hits a target in the bucket, and
the crop is made again from the cut photo through ``faceprep.warp.extract_face`` with each fill.

Per method and filled-fraction bucket:

* KID ×1000 (diffengine's Inception pool3 features) of the filled crops against the untouched crops of
  all evaluation faces (mean ± std over subsets),
* PSNR and SSIM (kornia, 11 px window) over the hidden band only,
* seam: gradient energy (Sobel) in a ±2 px band around the photo edge, filled / truth (1 = as in the
  truth; > 1 a visible edge; < 1 smoother than the truth),
* ms per face for the whole ``extract_face`` (2 torch threads).

    flock /tmp/bench.lock python bench/fill_quality.py --uncond RUN_U --inpaint RUN_I --n 24 \
        --sheet docs/fill_comparison.png --out /tmp/fill_quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from faceprep import plugins
from faceprep.geometry import output_to_source
from faceprep.types import Quad
from faceprep.warp import extract_face

BUCKETS = ((0.02, 0.10), (0.10, 0.20), (0.20, 0.35), (0.35, 0.50))
SIZE = 128


def outside_output_mask(quad: Quad, size: int, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    a = output_to_source(quad, size)
    u = np.arange(size, dtype=np.float64)
    x = a[0, 0] * u[None, :] + a[0, 1] * u[:, None] + a[0, 2]
    y = a[1, 0] * u[None, :] + a[1, 1] * u[:, None] + a[1, 2]
    return np.asarray((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5))


def inside_quad(rng: np.random.Generator, h: int, w: int) -> Quad:
    while True:
        side = rng.uniform(0.75, 0.95) * min(h, w)
        a = math.radians(rng.uniform(-12, 12))
        ex = np.array([math.cos(a), math.sin(a)]) * side
        ey = np.array([-math.sin(a), math.cos(a)]) * side
        c = np.array([w / 2, h / 2]) + rng.uniform(-0.06, 0.06, 2) * min(h, w)
        tl = c - ex / 2 - ey / 2
        corners = np.stack([tl, tl + ey, tl + ex + ey, tl + ex])
        if corners.min() >= 0 and corners[:, 0].max() <= w - 1 and corners[:, 1].max() <= h - 1:
            return Quad(corners)


def cut_for(
    rng: np.random.Generator, quad: Quad, shape: tuple[int, int], target: float
) -> tuple[tuple[int, int, int, int], float] | None:
    """(x0, y0, x1, y1) of a cut photo whose crop ``quad`` is ``target`` filled (within 15 %)."""
    h, w = shape
    sides = rng.permutation(4)[: rng.integers(1, 4)]
    weights = rng.uniform(0.3, 1.0, len(sides))
    x0q, y0q = quad.corners.min(0)
    x1q, y1q = quad.corners.max(0)
    reach = [x1q, y1q, w - x0q, h - y0q]  # how far each edge can move in before the crop is all outside

    def cut(t: float) -> tuple[int, int, int, int]:
        box = [0.0, 0.0, float(w), float(h)]
        for s, wt in zip(sides, weights, strict=True):
            d = t * wt * reach[s] * 0.9
            if s == 0:
                box[0] = d
            elif s == 1:
                box[1] = d
            elif s == 2:
                box[2] = w - d
            else:
                box[3] = h - d
        return round(box[0]), round(box[1]), round(box[2]), round(box[3])

    def fraction(t: float) -> float:
        x0, y0, x1, y1 = cut(t)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return 1.0
        q = Quad(quad.corners - [x0, y0])
        return float(outside_output_mask(q, SIZE, (y1 - y0, x1 - x0)).mean())

    lo, hi = 0.0, 1.0
    for _ in range(24):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fraction(mid) < target else (lo, mid)
    got = fraction(hi)
    if abs(got - target) > 0.15 * target + 0.01:
        return None
    return cut(hi), got


def sobel_energy(img: torch.Tensor) -> torch.Tensor:
    """(H, W) squared gradient magnitude of the grey image of (3, H, W) float."""
    grey = img.mean(0, keepdim=True)[None]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None] / 8
    gx = F.conv2d(grey, kx, padding=1)
    gy = F.conv2d(grey, kx.transpose(-1, -2), padding=1)
    return (gx**2 + gy**2)[0, 0]


def band_around(mask: np.ndarray, width: int = 2) -> torch.Tensor:
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    grown = F.max_pool2d(m, 2 * width + 1, stride=1, padding=width)
    shrunk = -F.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    band = (grown - shrunk)[0, 0] > 0
    band[:3, :] = band[-3:, :] = False  # not the crop's own border
    band[:, :3] = band[:, -3:] = False
    return band


def metrics(filled: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from kornia.metrics import ssim

    f = torch.from_numpy(filled).permute(2, 0, 1).float() / 255
    t = torch.from_numpy(truth).permute(2, 0, 1).float() / 255
    hidden = torch.from_numpy(mask)
    mse = float(((f - t) ** 2)[:, hidden].mean())
    ssim_map = ssim(f[None], t[None], 11)[0].mean(0)
    band = band_around(mask)
    seam = float(sobel_energy(f)[band].mean() / sobel_energy(t)[band].mean().clamp(min=1e-8))
    return {
        "psnr": 10 * math.log10(1 / max(mse, 1e-10)),
        "ssim": float(ssim_map[hidden].mean()),
        "seam": seam,
    }


def option(item: str) -> tuple[str, Any]:
    """KEY=VALUE parsed as ``faceprep crop --fill-opt`` parses it (a Python literal, else a string)."""
    from faceprep.cli import StageOption

    key, value = StageOption().convert(item, None, None)
    return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/utkface")
    ap.add_argument("--uncond", help="unconditional diffengine run")
    ap.add_argument("--inpaint", help="inpaint diffengine run")
    ap.add_argument("--n", type=int, default=24, help="faces per bucket")
    ap.add_argument("--holdout", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fill-opt", action="append", default=[], metavar="KEY=VALUE", help="generated fill option"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="one more generated fill, e.g. 'sdedit-1:model=RUN,init_sigma=1' (repeatable)",
    )
    ap.add_argument("--sheet", default="docs/fill_comparison.png")
    ap.add_argument("--out", default="fill_quality.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffengine.data import heldout_split
    from diffengine.metrics import kid
    from diffengine.metrics.inception import default_inception

    names = sorted(p.name for p in Path(args.data).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    _, held = heldout_split(names, args.holdout)
    rng = np.random.default_rng(args.seed)
    rng.shuffle(held)

    extra = dict(option(item) for item in args.fill_opt)
    methods: dict[str, Any] = {
        "constant": plugins.create("fill", "constant"),
        "edge": plugins.create("fill", "edge"),
        "reflect": plugins.create("fill", "reflect"),
        "mirror-blur": plugins.create("fill", "mirror-blur"),
    }
    if args.uncond:
        methods["generated-uncond"] = plugins.create("fill", "generated", model=args.uncond, **extra)
    if args.inpaint:
        methods["generated-inpaint"] = plugins.create("fill", "generated", model=args.inpaint, **extra)
    for spec in args.variant:
        label, _, items = spec.partition(":")
        options = {**extra, **dict(option(item) for item in items.split(",") if item)}
        methods[label] = plugins.create("fill", "generated", **options)

    cases: list[dict[str, Any]] = []
    pool = iter(held)
    for b, (lo, hi) in enumerate(BUCKETS):
        made = 0
        while made < args.n:
            name = next(pool)
            photo = np.asarray(Image.open(Path(args.data) / name).convert("RGB"))
            h, w = photo.shape[:2]
            quad = inside_quad(rng, h, w)
            found = cut_for(rng, quad, (h, w), rng.uniform(lo, hi))
            if found is None:
                continue
            (x0, y0, x1, y1), frac = found
            cases.append(
                {
                    "name": name,
                    "bucket": b,
                    "photo": photo,
                    "quad": quad,
                    "cut": (x0, y0, x1, y1),
                    "filled": frac,
                }
            )
            made += 1

    truth = []
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    crops: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    masks = []
    for case in cases:
        photo, quad, (x0, y0, x1, y1) = case["photo"], case["quad"], case["cut"]
        t, f0 = extract_face(photo, quad, SIZE, methods["constant"])
        assert f0 == 0.0
        truth.append(t)
        cut = np.ascontiguousarray(photo[y0:y1, x0:x1])
        q = Quad(quad.corners - [x0, y0])
        mask = outside_output_mask(q, SIZE, cut.shape[:2])
        masks.append(mask)
        for m, fill in methods.items():
            start = time.perf_counter()
            out, _ = extract_face(cut, q, SIZE, fill, source=case["name"], face_index=0)
            ms = (time.perf_counter() - start) * 1000
            crops[m].append(out)
            results[m].append({**metrics(out, t, mask), "ms": ms})
        print(f"{len(truth)}/{len(cases)} {case['name']} filled {case['filled']:.2f}", flush=True)

    inception = default_inception()

    def feats(images: list[np.ndarray]) -> torch.Tensor:
        return inception.embed(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), 32)

    ref = feats(truth)
    table: dict[str, Any] = {}
    for m in methods:
        got = feats(crops[m])
        for b in range(len(BUCKETS)):
            idx = [i for i, c in enumerate(cases) if c["bucket"] == b]
            k = kid(got[idx].numpy(), ref.numpy(), num_subsets=50, subset_size=len(idx))
            rows = [results[m][i] for i in idx]
            table[f"{m}/{b}"] = {
                "method": m,
                "bucket": f"{BUCKETS[b][0]:.0%}-{BUCKETS[b][1]:.0%}",
                "kid_x1000": 1000 * k.value,
                "kid_std_x1000": 1000 * float(k.std or 0.0),
                **{key: float(np.mean([r[key] for r in rows])) for key in ("psnr", "ssim", "seam", "ms")},
            }
    print("\n| method | filled | KID×1000 | PSNR (hidden) | SSIM (hidden) | seam | ms/face |")
    print("|---|---|---|---|---|---|---|")
    for row in table.values():
        print(
            f"| {row['method']} | {row['bucket']} | {row['kid_x1000']:.1f} ± {row['kid_std_x1000']:.1f} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | {row['seam']:.2f} | {row['ms']:.0f} |"
        )
    identity: dict[str, Any] = {m: getattr(f, "identity", dict)() for m, f in methods.items()}
    Path(args.out).write_text(
        json.dumps({"rows": list(table.values()), "fills": identity, "n_per_bucket": args.n}, indent=2)
    )
    write_sheet(Path(args.sheet), cases, truth, masks, crops)


def write_sheet(
    path: Path,
    cases: list[dict[str, Any]],
    truth: list[np.ndarray],
    masks: list[np.ndarray],
    crops: dict[str, list[np.ndarray]],
    per_bucket: int = 2,
) -> None:
    """Rows: faces (``per_bucket`` from each bucket); columns: truth, hidden band, every method."""
    from PIL import ImageDraw

    picks = [
        i
        for b in range(len(BUCKETS))
        for i in [j for j, c in enumerate(cases) if c["bucket"] == b][:per_bucket]
    ]
    cols = ["truth", "hidden", *crops]
    label_h, pad = 16, 2
    sheet = Image.new(
        "RGB", (len(cols) * (SIZE + pad) + pad, label_h + len(picks) * (SIZE + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(cols):
        draw.text((pad + c * (SIZE + pad) + 2, 2), title, fill="black")
    for r, i in enumerate(picks):
        hidden = truth[i].copy()
        hidden[masks[i]] = (hidden[masks[i]] * 0.25 + np.array([255, 0, 255]) * 0.75).astype(np.uint8)
        cells = [truth[i], hidden, *(crops[m][i] for m in crops)]
        for c, cell in enumerate(cells):
            sheet.paste(Image.fromarray(cell), (pad + c * (SIZE + pad), label_h + pad + r * (SIZE + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"contact sheet: {path}")


if __name__ == "__main__":
    main()
