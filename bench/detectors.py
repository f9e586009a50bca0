"""Benchmark: SCRFD vs YuNet on the shared photos (not collected by pytest).

Per detector: median ms per megapixel over all shared photos, faces found, recall at IoU 0.5 and
keypoint error (mean eye/mouth distance / inter-ocular distance) on the dlib group photos, and the
same with the rotation correction (which must not change recall: it keeps every plain detection's
box), plus the FFHQ-quad corner error on a portrait turned by 15°, 45°, 90° and −90°.
Usage: ``python bench/detectors.py [--shared DIR] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from faceprep.builtin.scrfd import ScrfdDetector
from faceprep.detection_eval import combine, load_imglab, match, rotation_errors
from faceprep.imageio import iter_images, load_image
from faceprep.rotation import RotationCorrectingDetector

ANGLES = (15, 45, 90, -90)


def detectors() -> dict[str, Any]:
    found: dict[str, Any] = {"scrfd": ScrfdDetector(num_threads=1)}
    try:
        from faceprep_yunet.plugin import YuNetDetector

        found["yunet"] = YuNetDetector(num_threads=1)
    except ImportError:
        print("faceprep-yunet not installed: YuNet skipped")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=os.environ.get("FACEPREP_SHARED", "../shared"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    photos = Path(args.shared) / "photos"
    paths = [p for p in iter_images(photos) if "aligned" not in p.as_posix()]
    images = [load_image(p) for p in paths]
    labelled = [
        i
        for n in ("training", "testing")
        for i in load_imglab(photos / f"dlib_faces/{n}_with_face_landmarks.xml")
    ]
    portrait = load_image(photos / "face_recognition/examples/obama.jpg")
    rows = []
    for name, det in detectors().items():
        ms_per_mp, faces = [], 0
        for img in images:
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = det.detect(img)
                ms_per_mp.append((time.perf_counter() - t) * 1e3 / (img.shape[0] * img.shape[1] / 1e6))
            faces += len(out)
        for label, d in ((name, det), (f"{name}+rot", RotationCorrectingDetector(det))):
            total = combine([match(i.faces, d.detect(load_image(i.path))) for i in labelled])
            rot = rotation_errors(d, portrait, ANGLES)
            speed = statistics.median(ms_per_mp) if d is det else float("nan")
            rows.append((label, speed, faces if d is det else -1, total, rot))
    print(
        f"{len(images)} photos, {sum(i.shape[0] * i.shape[1] for i in images) / 1e6:.1f} MP; dlib: 43 faces"
    )
    print(
        f"{'detector':<11}{'ms/MP':>8}{'faces':>7}{'recall':>8}{'kp med':>8}{'kp mean':>9} quad err "
        + "/".join(str(a) for a in ANGLES)
    )
    for label, speed, faces, total, rot in rows:
        e = np.array(total.keypoint_errors)
        print(
            f"{label:<11}{speed:>8.1f}{faces if faces >= 0 else '':>7}{total.recall:>8.3f}"
            f"{np.median(e):>8.3f}"
            f"{e.mean():>9.3f}  " + " / ".join(f"{x:.3f}" for x in rot)
        )
    for (label, _, _, plain, _), (_, _, _, fixed, _) in zip(rows[::2], rows[1::2], strict=True):
        same = "equal" if fixed.matched == plain.matched else "DIFFERENT"
        print(f"{label}: recall with correction {fixed.matched}/{fixed.labelled} vs {plain.matched} ({same})")
    base = rows[0][1]
    for label, speed, *_ in rows[1:]:
        if speed == speed:
            print(f"{label} speed vs scrfd: {base / speed:.2f}x")


if __name__ == "__main__":
    main()
