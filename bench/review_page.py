"""Responsiveness of ``faceprep review`` on a synthetic 50 000-face dataset, in a real headless Chromium.

    python bench/review_page.py                 # 50 000 faces, a temporary folder
    python bench/review_page.py --faces 100000 --dir /tmp/review50k --keep

Builds a dataset folder as ``faceprep crop`` writes it (70% kept with a small crop each, 30% rejected,
random but plausible filter values, 500 synthetic source photos so rejected faces' thumbnails are
rendered from a source), starts the review server on a loopback port and measures, in the browser:

* first paint: navigation start → the first screen of the grid is in the page (summary + the listing
  of every face fetched and laid out), and → its thumbnails loaded, with an empty thumbnail cache
  (cold: each is made on first request) and again with it filled (warm);
* filter changes: the time from changing a control to the grid showing the new listing;
* a jump to the middle of the grid: time until the thumbnails there are loaded.

Budgets (stated, not enforced by any test): first paint < 1500 ms, a filter change < 500 ms
(on a loaded 2-core machine, 50k faces: grid 300-750 ms, a filter change 30-360 ms).
Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faceprep.dataset import face_file_name
from faceprep.refilter import evaluate

FIRST_PAINT_BUDGET_MS = 1500.0
FILTER_BUDGET_MS = 500.0
THRESHOLDS = {"score": 0.6, "eye_distance": 20.0, "filled": 0.3, "blur": 15.0, "yaw": 50.0, "roll": None,
              "duplicate": 6.0}  # fmt: skip
ALL_LOADED = """
const done = arguments[arguments.length - 1];
(function poll() {
  const imgs = [...document.querySelectorAll('#grid .cell img')];
  if (imgs.length && imgs.every((i) => i.complete)) done(performance.now());
  else setTimeout(poll, 5);
})();
"""


def make_dataset(root: Path, n_faces: int, n_photos: int = 500, seed: int = 0) -> tuple[Path, Path]:
    """SRC (synthetic photos) and DST (``n_faces`` faces over them); returns (src, dst)."""
    rng = np.random.default_rng(seed)
    src, dst = root / "src", root / "dst"
    src.mkdir(parents=True)
    dst.mkdir(parents=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for j in range(n_photos):
        base = rng.integers(40, 215, 3)
        photo = np.clip(base + 30 * np.sin(xx[..., None] / (20 + j % 30) + yy[..., None] / 37), 0, 255)
        Image.fromarray(photo.astype(np.uint8)).save(src / f"p{j:04d}.jpg", quality=80)
    tiles = []  # a few pre-encoded 64 px crops, reused: writing 35k distinct PNGs is not the point
    for k in range(16):
        tile = np.zeros((64, 64, 3), np.uint8) + rng.integers(30, 220, 3).astype(np.uint8)
        tile[16:48, 20:44] = (k * 15) % 255
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, format="PNG")
        tiles.append(buf.getvalue())
    per_photo = -(-n_faces // n_photos)
    meta, rejected, journal = [], [], []
    for j in range(n_photos):
        source = f"p{j:04d}.jpg"
        files = []
        count = min(per_photo, n_faces - j * per_photo)
        for i in range(max(0, count)):
            cx, cy, side = rng.uniform(120, 520), rng.uniform(120, 360), rng.uniform(60, 200)
            angle = rng.normal(0, 0.2)
            c, s = np.cos(angle) * side / 2, np.sin(angle) * side / 2
            quad = [
                [cx - c + s, cy - s - c],
                [cx - c - s, cy - s + c],
                [cx + c - s, cy + s + c],
                [cx + c + s, cy + s - c],
            ]
            values = {
                "score": round(float(rng.uniform(0.5, 1.0)), 4),
                "eye_distance": round(float(rng.lognormal(3.6, 0.5)), 4),
                "filled": round(float(rng.beta(0.3, 6)), 4),
                "blur": round(float(rng.lognormal(3.8, 0.8)), 4),
                "yaw": round(float(rng.normal(0, 25)), 4),
                "roll": round(float(rng.normal(0, 10)), 4),
                "duplicate": float(64 if rng.random() < 0.9 else rng.integers(0, 40)),
            }
            reasons = evaluate(values, THRESHOLDS)
            rec: dict[str, Any] = {
                "source": source,
                "face_index": i,
                "box": [
                    round(cx - side / 3, 2),
                    round(cy - side / 3, 2),
                    round(cx + side / 3, 2),
                    round(cy + side / 3, 2),
                ],
                "score": values["score"],
                "landmarks": [
                    [round(cx + dx * side, 2), round(cy + dy * side, 2)]
                    for dx, dy in ((-0.15, -0.1), (0.15, -0.1), (0, 0.05), (-0.12, 0.2), (0.12, 0.2))
                ],
                "quad": np.round(quad, 2).tolist(),
                "filled_fraction": values["filled"],
                "detector": "scrfd",
                "filters": values,
                "rejected_by": reasons,
                "phash": f"{int(rng.integers(0, 2**63)):016x}",
            }
            if reasons:
                rejected.append(rec)
            else:
                name = face_file_name(source, i)
                (dst / name).write_bytes(tiles[(j + i) % len(tiles)])
                files.append(name)
                meta.append({"file_name": name, **rec})
        journal.append({"source": source, "faces": max(0, count), "files": files})
    for name, records in (("metadata.jsonl", meta), ("rejected.jsonl", rejected), ("done.jsonl", journal)):
        with open(dst / name, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    (dst / "errors.jsonl").write_text("")
    options = {"size": 64, "format": "png", "detector": "scrfd", "fill": "mirror-blur", "fill_options": {},
               "min_score": "detector", "min_eye_dist": 20.0, "max_filled": 0.3, "min_blur": 15.0,
               "max_yaw": 50.0, "max_roll": None, "dedup_distance": 6, "src": str(src)}  # fmt: skip
    (dst / "faceprep.json").write_text(json.dumps({"detector": {"name": "scrfd"}, "options": options}))
    return src, dst


def browser(chromium: str, driver_path: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,900", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(300)
    return driver


def wait_ready(driver: Any, ticket: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 300, poll_frequency=0.01).until(
        lambda d: int(d.find_element("tag name", "body").get_attribute("data-ready") or 0) >= ticket
    )


def first_paint(driver: Any, url: str) -> tuple[float, float]:
    """(ms to the grid laid out, ms to its thumbnails loaded), both since navigation start."""
    driver.get(url)
    wait_ready(driver, 1)
    grid_ms = float(driver.execute_script("return window.faceprepTiming.firstGrid"))
    thumbs_ms = float(driver.execute_async_script(ALL_LOADED))
    return grid_ms, thumbs_ms


def change(driver: Any, ticket: int, element: str, value: str | None = None) -> float:
    """ms from changing a control to the grid showing the new listing (measured in the page)."""
    if value is None:
        driver.find_element("id", element).click()
    else:
        driver.execute_script(
            "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
            "e.dispatchEvent(new Event('change'));",
            element,
            value,
        )
    wait_ready(driver, ticket)
    return float(driver.execute_script("return window.faceprepTiming.lastQuery.ms"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to build the dataset (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the dataset folder")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = parser.parse_args()
    from faceprep.review import make_server

    root = args.dir or Path(tempfile.mkdtemp(prefix="faceprep-review-bench-"))
    rows: list[tuple[str, float, str]] = []
    try:
        t = time.perf_counter()
        if not (root / "dst" / "done.jsonl").is_file():
            make_dataset(root, args.faces)
        print(f"dataset: {args.faces} faces in {root} ({time.perf_counter() - t:.1f} s to build)")
        shutil.rmtree(root / "dst" / ".faceprep-review", ignore_errors=True)  # a cold thumbnail cache
        t = time.perf_counter()
        server = make_server(root / "dst", port=0).start()
        rows.append(("server start (read every record)", (time.perf_counter() - t) * 1000, ""))
        driver = browser(args.chromium, args.chromedriver)
        try:
            grid, thumbs = first_paint(driver, server.url)
            over = "" if grid < FIRST_PAINT_BUDGET_MS else f"over {FIRST_PAINT_BUDGET_MS:.0f} ms"
            rows.append(("first paint: grid laid out (cold)", grid, over))
            rows.append(("first paint: thumbnails loaded (cold cache)", thumbs, ""))
            driver.execute_script("window.faceprepTiming.firstGrid = null")
            grid, thumbs = first_paint(driver, server.url)
            over = "" if grid < FIRST_PAINT_BUDGET_MS else f"over {FIRST_PAINT_BUDGET_MS:.0f} ms"
            rows.append(("first paint: grid laid out (warm)", grid, over))
            rows.append(("first paint: thumbnails loaded (warm cache)", thumbs, ""))
            changes = [
                ("filter: reason = blur", "reason", "blur"),
                ("filter: status = rejected", "status", "rejected"),
                ("sort: yaw", "sort", "yaw"),
                ("sort order: descending", "order", None),
                ("filter: back to every face", "status", "all"),
                ("filter: reason = any (all 50k)", "reason", ""),
            ]
            for ticket, (label, element, value) in enumerate(changes, start=2):
                ms = change(driver, ticket, element, value)
                count = driver.find_element("id", "grid").get_attribute("data-count")
                rows.append((f"{label} ({count} faces)", ms, "" if ms < FILTER_BUDGET_MS else "over budget"))
            start = driver.execute_script(
                "const g = document.getElementById('grid'); const t = performance.now();"
                "g.scrollTop = g.scrollHeight / 2; return t;"
            )
            loaded = driver.execute_async_script(ALL_LOADED)
            rows.append(("jump to the middle: thumbnails loaded (cold)", float(loaded) - float(start), ""))
            listing = driver.execute_script(
                "return fetch('/api/faces').then(r => r.text()).then(t => t.length)"
            )
            rows.append(("listing of every face: JSON size in kB (not ms)", float(listing) / 1000, ""))
        finally:
            driver.quit()
            server.close()
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'step':<{width}}  {'ms':>9}")
    for label, ms, note in rows:
        print(f"{label:<{width}}  {ms:9.1f}  {note}")
    budgets = f"first paint < {FIRST_PAINT_BUDGET_MS:.0f} ms, a filter change < {FILTER_BUDGET_MS:.0f} ms"
    print(f"\nbudgets: {budgets}")


if __name__ == "__main__":
    main()
