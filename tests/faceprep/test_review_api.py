"""The review page's HTTP API, against a real server on an ephemeral loopback port (the dataset:
tests/faceprep/review_data.py)."""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from faceprep.dataset import face_file_name
from faceprep.review import decisions, effective_kept, make_server, materialise_rescued
from faceprep.review.server import ReviewServer, warn_if_exposed
from faceprep.review.store import REVIEW


def _load_helper() -> Any:
    spec = importlib.util.spec_from_file_location(
        "faceprep_review_data", Path(__file__).with_name("review_data.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


data = _load_helper()
QUAD, BOX, LANDMARKS, FACES = data.QUAD, data.BOX, data.LANDMARKS, data.FACES
build_dataset, _filters = data.build_dataset, data.filters


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    return build_dataset(tmp_path)


@pytest.fixture()
def server(dataset: tuple[Path, Path]) -> Iterator[ReviewServer]:
    src, dst = dataset
    with make_server(dst, port=0, src=src).start() as srv:
        yield srv


def call(
    srv: ReviewServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    sent = {"Host": host or f"127.0.0.1:{srv.port}", **(headers or {})}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["X-Faceprep-Token"] = token
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), payload


def get_json(srv: ReviewServer, path: str) -> Any:
    status, _, payload = call(srv, "GET", path)
    assert status == 200, payload
    return json.loads(payload)


def decide(srv: ReviewServer, face_id: int, decision: str | None, generation: int = 1) -> Any:
    status, _, payload = call(
        srv,
        "POST",
        "/api/decision",
        {"id": face_id, "decision": decision, "generation": generation},
        token=srv.token,
    )
    assert status == 200, payload
    return json.loads(payload)


def ids_of(srv: ReviewServer, key: tuple[str, int]) -> int:
    return srv.app.table.index[key]


# --- reading ---------------------------------------------------------------------------------------


def test_page_embeds_token_and_serves_its_assets(server: ReviewServer) -> None:
    status, headers, page = call(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert server.token.encode() in page and b"{{TOKEN}}" not in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name in ("app.js", "app.css"):
        status, _, body = call(server, "GET", f"/static/{name}")
        assert status == 200 and body
    assert b"http" not in call(server, "GET", "/static/app.css")[2]  # nothing fetched from elsewhere


def test_summary_counts_thresholds_and_histograms(server: ReviewServer) -> None:
    s = get_json(server, "/api/summary")
    assert s["total"] == 6
    assert s["counts"] == {"kept": 2, "rejected": 4, "keep": 0, "reject": 0, "effective_kept": 2}
    filters = {f["name"]: f for f in s["filters"]}
    assert filters["score"]["threshold"] == 0.6  # min_score "detector": SCRFD's own default
    assert filters["yaw"]["rule"] == "|x| ≤ 50" and filters["roll"]["rule"] == "off"
    assert filters["duplicate"]["rule"] == "> 6"
    assert {r["name"]: r["count"] for r in s["reasons"]} == {"score": 1, "blur": 1, "yaw": 2, "duplicate": 1}
    yaw = s["histograms"]["yaw"]
    assert yaw["marks"] == [-50.0, 50.0] and sum(yaw["kept"]) == 2 and sum(yaw["rejected"]) == 4
    assert s["histograms"]["blur"]["marks"] == [15.0]


def test_listing_filters_by_status_and_reason(server: ReviewServer) -> None:
    everything = get_json(server, "/api/faces")
    assert everything["total"] == 6
    keys = [server.app.table.keys[i] for i in everything["ids"]]
    assert keys == [(f[0], f[1]) for f in FACES]  # run order: journal order, then face index
    assert everything["status"] == [0 if f[2] else 1 for f in FACES]
    kept = get_json(server, "/api/faces?status=kept")
    assert [server.app.table.keys[i] for i in kept["ids"]] == [("a.jpg", 0), ("sub/b.png", 1)]
    assert get_json(server, "/api/faces?status=rejected")["total"] == 4
    yaw = get_json(server, "/api/faces?reason=yaw")
    assert {server.app.table.keys[i] for i in yaw["ids"]} == {("a.jpg", 1), ("c.jpg", 0)}
    reasons = server.app.table.reason_names
    assert all(mask >> reasons.index("yaw") & 1 for mask in yaw["reasons"])
    assert get_json(server, "/api/faces?status=kept&reason=yaw")["total"] == 0
    page = get_json(server, "/api/faces?offset=2&limit=3")
    assert page["total"] == 6 and page["ids"] == everything["ids"][2:5]


def test_listing_sorts_by_any_filter_value(server: ReviewServer) -> None:
    by_yaw = get_json(server, "/api/faces?sort=yaw&order=desc")
    assert by_yaw["value"] == [-60.0, 55.0, 20.0, 5.0, 5.0, 5.0]  # by |yaw|: the threshold is on |yaw|
    by_score = get_json(server, "/api/faces?sort=score&order=asc")
    assert by_score["value"][0] == 0.55 and by_score["value"] == sorted(by_score["value"])
    by_dup = get_json(server, "/api/faces?sort=duplicate")
    assert by_dup["value"][:2] == [2.0, 32.0]
    for bad in ("sort=nope", "status=nope", "reason=nope", "order=up", "offset=x"):
        assert call(server, "GET", f"/api/faces?{bad}")[0] == 400


def test_detail_has_thresholds_source_and_duplicate_match(server: ReviewServer) -> None:
    dup_id = ids_of(server, ("sub/b.png", 0))
    d = get_json(server, f"/api/face/{dup_id}")
    assert d["status"] == "rejected" and d["reasons"] == ["duplicate"] and d["file_name"] is None
    rows = {f["name"]: f for f in d["filters"]}
    assert rows["duplicate"] == {
        "name": "duplicate",
        "label": "duplicate distance",
        "value": 2.0,
        "threshold": 6.0,
        "rule": "> 6",
        "passed": False,
    }
    assert rows["yaw"]["passed"] and rows["yaw"]["threshold"] == 50.0
    assert d["duplicate"] == {"id": ids_of(server, ("a.jpg", 0)), "distance": 2, "source": "a.jpg"}
    assert d["source_image"] == {"width": 220, "height": 180}
    assert d["record"]["quad"] == QUAD and len(d["record"]["landmarks"]) == 5
    assert call(server, "GET", "/api/face/99")[0] == 404
    assert call(server, "GET", "/api/face/-1")[0] == 404


def test_thumbnails_are_cached_for_kept_and_rendered_for_rejected(server: ReviewServer) -> None:
    dst = server.app.root
    for key in (("a.jpg", 0), ("c.jpg", 1)):  # a crop on disk; none: rendered from source + quad
        status, headers, body = call(server, "GET", f"/thumb/{ids_of(server, key)}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(body)).size == (128, 128)
    cached = list((dst / ".faceprep-review" / "thumbs").rglob("*.jpg"))
    assert len(cached) == 2
    again = call(server, "GET", f"/thumb/{ids_of(server, ('a.jpg', 0))}")[2]
    assert again in {p.read_bytes() for p in cached}
    status, headers, body = call(server, "GET", f"/crop/{ids_of(server, ('c.jpg', 1))}")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (64, 64)  # the dataset's size
    status, headers, body = call(server, "GET", f"/source/{ids_of(server, ('c.jpg', 1))}")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (220, 180)


def test_without_src_rejected_faces_have_no_picture(dataset: tuple[Path, Path]) -> None:
    _, dst = dataset
    with make_server(dst, port=0).start() as srv:
        rejected = ids_of(srv, ("c.jpg", 1))
        assert call(srv, "GET", f"/thumb/{rejected}")[0] == 404
        assert call(srv, "GET", f"/source/{rejected}")[0] == 404
        assert get_json(srv, f"/api/face/{rejected}")["source_image"] is None
        assert call(srv, "GET", f"/thumb/{ids_of(srv, ('a.jpg', 0))}")[0] == 200  # its crop is in DST


def test_src_recorded_in_faceprep_json_is_used(dataset: tuple[Path, Path]) -> None:
    src, dst = dataset
    record = json.loads((dst / "faceprep.json").read_text())
    (dst / "faceprep.json").write_text(json.dumps({**record, "src": str(src)}))
    with make_server(dst, port=0).start() as srv:
        assert call(srv, "GET", f"/source/{ids_of(srv, ('c.jpg', 1))}")[0] == 200


# --- decisions -------------------------------------------------------------------------------------


def test_decisions_are_appended_and_the_last_one_wins(server: ReviewServer) -> None:
    dst = server.app.root
    kept = ids_of(server, ("a.jpg", 0))
    rescued = ids_of(server, ("c.jpg", 1))
    result = decide(server, kept, "reject")
    assert result["counts"] == {"keep": 0, "reject": 1, "effective_kept": 1}
    decide(server, rescued, "reject")
    decide(server, rescued, "keep")  # changed its mind: the last line wins
    lines = [json.loads(line) for line in (dst / REVIEW).read_text().splitlines()]
    assert [(r["source"], r["face_index"], r["decision"]) for r in lines] == [
        ("a.jpg", 0, "reject"),
        ("c.jpg", 1, "reject"),
        ("c.jpg", 1, "keep"),
    ]
    assert decisions(dst) == {("a.jpg", 0): "reject", ("c.jpg", 1): "keep"}
    listing = get_json(server, "/api/faces?status=reviewed")
    assert set(listing["ids"]) == {kept, rescued} and sorted(listing["decision"]) == [1, 2]
    effective = get_json(server, "/api/faces?status=effective_kept")["ids"]
    assert set(effective) == {ids_of(server, ("sub/b.png", 1)), rescued}
    assert get_json(server, "/api/faces?status=overruled")["total"] == 2
    faces = effective_kept(dst)
    assert [(r["source"], r["face_index"]) for r in faces] == [("sub/b.png", 1), ("c.jpg", 1)]
    assert faces[1]["rescued"] is True and faces[1]["file_name"] is None  # no crop on disk yet
    decide(server, kept, None)  # undo: back to faceprep's own verdict
    assert decisions(dst) == {("c.jpg", 1): "keep"}
    assert (effective_kept(dst)[0]["source"], effective_kept(dst)[0]["face_index"]) == ("a.jpg", 0)
    assert get_json(server, f"/api/face/{rescued}")["decision"] == "keep"


def test_decisions_survive_a_restart_and_a_torn_line(dataset: tuple[Path, Path]) -> None:
    src, dst = dataset
    with make_server(dst, port=0, src=src).start() as srv:
        decide(srv, ids_of(srv, ("a.jpg", 1)), "keep")
    with open(dst / REVIEW, "a") as fh:
        fh.write('{"source": "a.jpg", "face_index": 0, "deci')  # a writer killed mid-line
    with make_server(dst, port=0, src=src).start() as srv:
        assert get_json(srv, "/api/summary")["counts"]["keep"] == 1
        decide(srv, ids_of(srv, ("c.jpg", 0)), "keep")
    assert decisions(dst) == {("a.jpg", 1): "keep", ("c.jpg", 0): "keep"}


def test_materialise_rescued_writes_the_crop_under_the_dataset_name(server: ReviewServer) -> None:
    dst = server.app.root
    decide(server, ids_of(server, ("c.jpg", 1)), "keep")
    result = materialise_rescued(dst, server.app.src)
    name = face_file_name("c.jpg", 1)
    assert result.written == [name] and result.missing == []
    assert Image.open(dst / name).size == (64, 64)
    assert not list(dst.glob(".faceprep-tmp-*"))
    journal = [json.loads(line) for line in (dst / "done.jsonl").read_text().splitlines()]
    assert journal[-1] == {"source": "c.jpg", "writing": [name]}  # a resumed crop run owns the file
    rescued = [r for r in effective_kept(dst) if r.get("rescued")]
    assert rescued[0]["file_name"] == name
    assert materialise_rescued(dst, server.app.src).written == []  # nothing left to do


def test_writes_need_the_token_json_and_our_origin(server: ReviewServer) -> None:
    body = {"id": 0, "decision": "reject", "generation": 1}
    assert call(server, "POST", "/api/decision", body)[0] == 403
    assert call(server, "POST", "/api/decision", body, token="wrong")[0] == 403
    assert call(server, "POST", "/api/decision", body, token="")[0] == 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert call(server, "POST", "/api/decision", b"id=0", token=server.token, headers=form)[0] == 415
    evil = {"Origin": "http://evil.example"}
    assert call(server, "POST", "/api/decision", body, token=server.token, headers=evil)[0] == 403
    assert call(server, "POST", "/api/decision", {**body, "generation": 7}, token=server.token)[0] == 409
    assert call(server, "POST", "/api/decision", {**body, "decision": "x"}, token=server.token)[0] == 400
    assert call(server, "POST", "/api/decision", {**body, "id": 99}, token=server.token)[0] == 404
    assert not (server.app.root / REVIEW).exists()  # none of these wrote anything
    ours = {"Origin": f"http://127.0.0.1:{server.port}"}
    assert call(server, "POST", "/api/decision", body, token=server.token, headers=ours)[0] == 200
    assert (server.app.root / REVIEW).exists()


def test_host_header_must_name_this_server(server: ReviewServer) -> None:
    port = server.port
    assert call(server, "GET", "/api/summary", host=f"localhost:{port}")[0] == 200
    assert call(server, "GET", "/api/summary", host=f"[::1]:{port}")[0] == 200
    for host in (
        f"evil.example:{port}",
        "127.0.0.1",
        f"127.0.0.1:{port + 1}",
        f"127.0.0.1.evil.example:{port}",
    ):
        assert call(server, "GET", "/", host=host)[0] == 403, host
    assert call(server, "POST", "/api/decision", {"id": 0}, token=server.token, host=f"evil:{port}")[0] == 403


# --- what is served --------------------------------------------------------------------------------


def test_path_traversal_is_refused(server: ReviewServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (40, 40), "red").save(secret)
    for path in (
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e%2f%2e%2e%2fsecret.jpg",
        "/static/",
        "/static/index.html/../app.js/..",
        "/thumb/../../secret.jpg",
        "/source/0%2f..%2f..%2fsecret.jpg",
        "/crop/1e3",
        "/../secret.jpg",
        "/%2e%2e/secret.jpg",
        "//etc/passwd",
    ):
        status, _, body = call(server, "GET", path)
        assert status == 404, path
        assert b"faceprep" not in body or b"error" in body


def test_sources_outside_src_and_symlinks_out_are_not_served(server: ReviewServer, tmp_path: Path) -> None:
    app = server.app
    assert app.src is not None
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (40, 40), "red").save(secret)
    (app.src / "link.jpg").symlink_to(secret)  # a symlink inside SRC pointing out of it
    (app.root / "evil.png").symlink_to(secret)  # a "crop" in DST pointing out of it
    base: dict[str, Any] = {
        "face_index": 0,
        "box": BOX,
        "score": 0.9,
        "landmarks": LANDMARKS,
        "quad": [[0, 0], [0, 40], [40, 40], [40, 0]],
        "filters": _filters(score=0.1),
        "rejected_by": ["score"],
    }
    sources = ["../secret.jpg", str(secret), "link.jpg", "sub/../../secret.jpg"]
    with open(app.root / "rejected.jsonl", "a") as fh:
        for source in sources:
            fh.write(json.dumps({**base, "source": source}) + "\n")
    with open(app.root / "metadata.jsonl", "a") as fh:
        fh.write(
            json.dumps({**base, "file_name": "evil.png", "source": "../secret.jpg", "face_index": 1}) + "\n"
        )
        fh.write(
            json.dumps({**base, "file_name": "../secret.jpg", "source": "x.jpg", "face_index": 1}) + "\n"
        )
    assert get_json(server, "/api/summary")["total"] == 12  # reloaded: the files changed
    for source, index in [(s, 0) for s in sources] + [("../secret.jpg", 1), ("x.jpg", 1)]:
        face = ids_of(server, (source, index))
        for route in ("thumb", "crop", "source"):
            assert call(server, "GET", f"/{route}/{face}")[0] == 404, (source, route)
        assert get_json(server, f"/api/face/{face}")["source_image"] is None


def test_a_changed_dataset_is_reloaded_and_stale_writes_refused(server: ReviewServer) -> None:
    assert get_json(server, "/api/summary")["generation"] == 1
    os.utime(server.app.root / "metadata.jsonl", ns=(1, 1))
    assert get_json(server, "/api/summary")["generation"] == 2
    body = {"id": 0, "decision": "keep", "generation": 1}
    assert call(server, "POST", "/api/decision", body, token=server.token)[0] == 409


def test_loopback_by_default_and_a_warning_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        not warn_if_exposed("127.0.0.1") and not warn_if_exposed("::1") and not warn_if_exposed("localhost")
    )
    assert capsys.readouterr().err == ""
    assert warn_if_exposed("0.0.0.0")
    assert "anyone who can reach" in capsys.readouterr().err


def test_not_a_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a faceprep dataset"):
        make_server(tmp_path, port=0)
