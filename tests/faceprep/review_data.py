"""A small faceprep dataset built directly (records, crops, journal, faceprep.json as ``faceprep crop``
writes them) over three synthetic noise photos, so every value, reason and duplicate pair is known.
Shared by the review and refilter tests (loaded by path: the tests folder is not a package on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceprep.dataset import face_file_name

QUAD = [[60.0, 40.0], [60.0, 140.0], [160.0, 140.0], [160.0, 40.0]]  # TL, BL, BR, TR: axis-aligned
BOX = [75.0, 55.0, 145.0, 135.0]
LANDMARKS = [[95.0, 80.0], [125.0, 80.0], [110.0, 95.0], [98.0, 115.0], [122.0, 115.0]]
SOURCES = ["a.jpg", "sub/b.png", "c.jpg"]


def filters(**overrides: float) -> dict[str, float]:
    base = {"score": 0.9, "eye_distance": 30.0, "filled": 0.0, "blur": 50.0, "yaw": 5.0, "roll": 1.0}
    return {**base, **overrides, "duplicate": overrides.get("duplicate", 64.0)}


# (source, face_index, kept, filters, rejected_by, phash)
FACES: list[tuple[str, int, bool, dict[str, float], list[str], str]] = [
    ("a.jpg", 0, True, filters(), [], "0000000000000000"),
    ("a.jpg", 1, False, filters(yaw=-60.0), ["yaw"], "ffffffffffffffff"),
    ("sub/b.png", 0, False, filters(duplicate=2.0), ["duplicate"], "0000000000000003"),
    ("sub/b.png", 1, True, filters(yaw=20.0, blur=200.0, duplicate=32.0), [], "00000000ffffffff"),
    ("c.jpg", 0, False, filters(blur=5.0, yaw=55.0), ["blur", "yaw"], "0f0f0f0f0f0f0f0f"),
    ("c.jpg", 1, False, filters(score=0.55), ["score"], "f0f0f0f0f0f0f0f0"),
]


def build_dataset(root: Path) -> tuple[Path, Path]:
    """SRC (three noise photos) and DST (the six faces above); returns (src, dst)."""
    src, dst = root / "src", root / "dst"
    rng = np.random.default_rng(0)
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (180, 220, 3), dtype=np.uint8)).save(src / name)
    dst.mkdir()
    meta, rejected, journal = [], [], []
    for source in SOURCES:
        faces = [f for f in FACES if f[0] == source]
        files = []
        for src_name, index, kept, values, reasons, phash in faces:
            rec: dict[str, Any] = {
                "source": src_name,
                "face_index": index,
                "box": BOX,
                "score": values["score"],
                "landmarks": LANDMARKS,
                "quad": QUAD,
                "filled_fraction": values["filled"],
                "detector": "scrfd",
                "filters": values,
                "rejected_by": reasons,
                "phash": phash,
            }
            if kept:
                name = face_file_name(src_name, index)
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(dst / name)
                files.append(name)
                meta.append({"file_name": name, **rec})
            else:
                rejected.append(rec)
        journal.append({"source": source, "faces": len(faces), "files": files})
    for name, records in (("metadata.jsonl", meta), ("rejected.jsonl", rejected), ("done.jsonl", journal)):
        (dst / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (dst / "errors.jsonl").write_text("", encoding="utf-8")
    options = {
        "size": 64,
        "format": "png",
        "detector": "scrfd",
        "fill": "mirror-blur",
        "fill_options": {},
        "min_score": "detector",
        "min_eye_dist": 20.0,
        "max_filled": 0.3,
        "min_blur": 15.0,
        "max_yaw": 50.0,
        "max_roll": None,
        "dedup_distance": 6,
    }
    record = {"faceprep_version": "test", "detector": {"name": "scrfd"}, "options": options}
    (dst / "faceprep.json").write_text(json.dumps(record), encoding="utf-8")
    return src, dst
