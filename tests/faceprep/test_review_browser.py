"""The review page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, Selenium).

The dataset is made by ``faceprep crop`` from three shared photos. The test checks the grid's count,
filters to one rejection reason, opens a face's detail panel, rejects a face with the keyboard, undoes
another decision, reloads and sees the decision persisted, and that ``effective_kept`` (what training
reads) leaves the face out. It saves a screenshot; set ``FACEPREP_REVIEW_SCREENSHOT=docs/review.png`` to
also write it there. Skipped, with the reason, only when Chromium, chromedriver or Selenium is missing
(``.ci/install_browser.sh`` installs them).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from faceprep.dataset import read_jsonl
from faceprep.review import decisions, effective_kept, make_server
from faceprep.review.server import ReviewServer

PHOTOS = ["dlib_faces/bald_guys.jpg", "dlib_faces/dogs.jpg", "insightface/t1.jpg"]
WAIT_S = 60


def _browser_paths() -> tuple[str, str]:
    chromium = os.environ.get("FACEPREP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = (
        os.environ.get("FACEPREP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    )
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; the lead's review-test extra)")
    chromium, driver_path = _browser_paths()
    for path, package in ((chromium, "chromium"), (driver_path, "chromium-driver")):
        if not Path(path).is_file():
            pytest.skip(f"{path} not found: install Debian's {package} (.ci/install_browser.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # both paths given: Selenium Manager downloads nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,900", "--force-device-scale-factor=1", "--no-first-run",
                "--disable-background-networking", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dataset(
    tmp_path_factory: pytest.TempPathFactory, photos_dir: Path, scrfd_model: Path
) -> tuple[Path, Path]:
    from faceprep.cli import main

    root = tmp_path_factory.mktemp("review")
    src, dst = root / "src", root / "dst"
    src.mkdir()
    for photo in PHOTOS:
        shutil.copy(photos_dir / photo, src / Path(photo).name)
    args = ["crop", str(src), str(dst), "--model", str(scrfd_model), "--workers", "1", "--size", "64",
            "--max-yaw", "25", "--min-eye-dist", "30", "--min-blur", "8", "--no-contact-sheet",
            "--no-rotation-fix"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return src, dst


@pytest.fixture(scope="module")
def server(dataset: tuple[Path, Path]) -> Iterator[ReviewServer]:
    src, dst = dataset
    with make_server(dst, port=0, src=src).start() as srv:
        yield srv


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message=what)


def _ready(driver: Any, queries: int) -> None:
    """Wait until the page has rendered its ``queries``-th listing."""
    _wait(
        driver,
        lambda d: int(d.find_element("tag name", "body").get_attribute("data-ready") or 0) >= queries,
        f"listing #{queries} rendered",
    )


def _count(driver: Any) -> int:
    return int(driver.find_element("id", "grid").get_attribute("data-count"))


def _cells(driver: Any) -> list[Any]:
    return list(driver.find_elements("css selector", "#grid .cell"))


def _press(driver: Any, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_review_page_end_to_end(
    browser: Any, server: ReviewServer, dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    _, dst = dataset
    kept = read_jsonl(dst / "metadata.jsonl")
    rejected = read_jsonl(dst / "rejected.jsonl")
    reasons = Counter(r for rec in rejected for r in rec["rejected_by"])
    assert kept and len(reasons) >= 2, reasons  # the options above reject faces for several reasons

    # the grid shows every face, kept and rejected, with thumbnails
    browser.get(server.url)
    _ready(browser, 1)
    assert _count(browser) == len(kept) + len(rejected)
    assert browser.find_element("id", "shown").text == f"{len(kept) + len(rejected)} shown"
    assert len(_cells(browser)) == len(kept) + len(rejected)  # few enough to all be in the window
    _wait(
        browser,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#grid .cell img')]"
            ".every(i => i.complete && i.naturalWidth)"
        ),
        "every thumbnail loaded (rejected ones rendered from the source photos)",
    )
    assert len(browser.find_elements("css selector", "#hists canvas")) == 7

    # filter to one rejection reason: only faces with that badge remain
    reason, count = reasons.most_common(1)[0]
    Select(browser.find_element("id", "reason")).select_by_value(reason)
    _ready(browser, 2)
    assert _count(browser) == count
    cells = _cells(browser)
    assert len(cells) == count
    assert all(c.find_elements("css selector", f".badge.r-{reason}") for c in cells)
    assert all("rejected" in c.get_attribute("class") for c in cells)

    # a face's detail panel: source photo with box, quad and 5 landmarks; every filter with its threshold
    opened = int(cells[0].get_attribute("data-id"))
    cells[0].click()  # the grid narrows for the panel: its cells are laid out again
    detail = browser.find_element("id", "detail")
    _wait(browser, lambda d: detail.get_attribute("data-id") == str(opened), "detail panel shown")
    assert detail.is_displayed()
    face = server.app.detail(opened)
    assert face["source"] in browser.find_element("id", "dtitle").text
    svg = browser.find_element("css selector", "#dsource svg")
    assert len(svg.find_elements("css selector", "circle")) == 5
    assert svg.find_elements("css selector", "polygon") and svg.find_elements("css selector", "rect")
    rows = browser.find_elements("css selector", "#dfilters tbody tr")
    assert len(rows) == 7
    failing = [r.find_elements("tag name", "td")[0].text for r in rows if "fail" in r.get_attribute("class")]
    assert any(reason.split("_")[0] in label for label in failing), failing
    assert any("≥" in r.text or "≤" in r.text for r in rows)
    _wait(
        browser,
        lambda d: (
            d.execute_script(
                "const i = document.querySelector('#dsource svg image'); return !!i && i.getBBox().width > 0"
            )
            and d.execute_script("return document.getElementById('dcrop').naturalWidth > 0")
        ),
        "source photo and crop loaded",
    )

    # reject a kept face with the keyboard; keep and undo another
    Select(browser.find_element("id", "reason")).select_by_value("")
    Select(browser.find_element("id", "status")).select_by_value("kept")
    _ready(browser, 4)
    assert _count(browser) == len(kept)
    _press(browser, Keys.ARROW_RIGHT)  # selects the first face
    first = _cells(browser)[0]
    assert "sel" in first.get_attribute("class")
    target = int(first.get_attribute("data-id"))
    _press(browser, "r")
    _wait(browser, lambda d: "d-reject" in first.get_attribute("class"), "the rejected mark")
    chosen = server.app.table.keys[target]
    _wait(browser, lambda d: decisions(dst) == {chosen: "reject"}, "the decision stored in review.jsonl")
    second = _cells(browser)[1]
    assert "sel" in second.get_attribute("class")  # a decision moves on to the next face
    _press(browser, "k")
    _wait(browser, lambda d: "d-keep" in second.get_attribute("class"), "the kept mark")
    _press(browser, "u")
    _wait(browser, lambda d: "d-keep" not in second.get_attribute("class"), "the undone mark")
    _wait(browser, lambda d: decisions(dst) == {chosen: "reject"}, "the undo stored")

    # reload: the decision is still there, and training's list of faces leaves the face out
    browser.refresh()
    _ready(browser, 1)
    mark = browser.find_element("css selector", f'#grid .cell[data-id="{target}"]')
    assert "d-reject" in mark.get_attribute("class")
    assert "you kept 0, rejected 1" in browser.find_element("id", "counts").text
    Select(browser.find_element("id", "status")).select_by_value("reviewed")
    _ready(browser, 2)
    assert _count(browser) == 1
    effective = {(r["source"], r["face_index"]) for r in effective_kept(dst)}
    assert chosen not in effective and len(effective) == len(kept) - 1

    # the screenshot for the README: every face, a rejected face's details open
    Select(browser.find_element("id", "status")).select_by_value("all")
    _ready(browser, 3)
    by_reason = [c for c in _cells(browser) if c.find_elements("css selector", ".badge.r-yaw")]
    (by_reason or _cells(browser))[0].click()
    _wait(
        browser,
        lambda d: d.execute_script(
            "const i = document.querySelector('#dsource svg image'); return !!i && i.getBBox().width > 0"
            " && document.getElementById('dcrop').naturalWidth > 0"
            " && [...document.querySelectorAll('#grid .cell img')].every(i => i.complete)"
        ),
        "the detail panel loaded",
    )
    browser.execute_script("return new Promise(r => setTimeout(r, 300))")  # let the source image paint
    shot = tmp_path / "review.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if target_path := os.environ.get("FACEPREP_REVIEW_SCREENSHOT"):  # for the README: 256 colours
        with Image.open(shot) as im:
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(target_path, optimize=True)
    assert not [e for e in _errors(browser) if "favicon" not in e], _errors(browser)
