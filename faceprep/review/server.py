"""The review page's HTTP server (standard library only): ``faceprep review DST``.

Security (a local tool serving a user's photos):

* it binds to 127.0.0.1 unless a host is given explicitly (then it warns on stderr);
* every request's ``Host`` header must name the address it is served on (loopback names, or the
  explicit host), which stops DNS-rebinding pages from reading it;
* it serves only files inside DST (crops directly in it) and inside SRC (source photos of recorded
  faces), each looked up by face id, never by a path from the request; paths are resolved with
  symlinks followed and refused when they leave DST or SRC;
* every write (POST) must carry the per-run random token embedded in the page, in the
  ``X-Faceprep-Token`` header (403 without it), and a JSON content type (so a cross-site form cannot
  send it without a CORS preflight, which this server never grants).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import os
import secrets
import sys
import threading
import webbrowser
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from faceprep.refilter import RULES, recorded_thresholds, resolved_thresholds
from faceprep.review.render import CropRenderer, find_src
from faceprep.review.store import (
    KEEP,
    REJECT,
    DecisionLog,
    FaceTable,
    decision_codes,
    open_reader,
)
from faceprep.review.thumbs import ThumbCache

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
TOKEN_HEADER = "X-Faceprep-Token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
STATUSES = ("all", "kept", "rejected", "reviewed", "overruled", "effective_kept", "effective_rejected")
HIST_BINS = 40
SOURCE_MAX_SIDE = 1600
MAX_BODY = 64 * 1024
LABELS = {
    "score": "detection score",
    "eye_distance": "eye distance (px)",
    "filled": "filled fraction",
    "blur": "sharpness (blur)",
    "yaw": "yaw (°)",
    "roll": "roll (°)",
    "duplicate": "duplicate distance",
}


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReviewApp:
    """The dataset, decisions and caches behind the page; every method is safe to call from threads."""

    def __init__(self, dst: str | os.PathLike[str], src: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(dst)
        self.reader = open_reader(self.root)
        self.options = self.reader.options()
        self.src = find_src(self.root, src)
        self.renderer = CropRenderer(self.src, self.options)
        self.thumbs = ThumbCache(self.root, self.reader, self.renderer)
        self.log = DecisionLog(self.root)
        self._lock = threading.RLock()
        self._sources: OrderedDict[int, bytes] = OrderedDict()
        self.generation = 0
        self._load()

    # --- loading ------------------------------------------------------------------------------------

    def _load(self) -> None:
        self.options = self.reader.options()
        table = FaceTable.load(self.reader)
        thresholds = recorded_thresholds(self.options)
        limits = resolved_thresholds(thresholds, self.options)
        codes = decision_codes(table, self.log.current)
        with self._lock:
            self.table, self.thresholds, self.limits, self.decided = table, thresholds, limits, codes
            self.signature = self.reader.signature()
            self.histograms = self._histograms()
            self.generation += 1
            self._sources.clear()

    def reload_if_changed(self) -> None:
        """Read the dataset again if its records changed (a running crop, a refilter)."""
        if self.reader.signature() != self.signature:
            self._load()

    def _histograms(self) -> dict[str, Any]:
        t = self.table
        out: dict[str, Any] = {}
        for j, name in enumerate(t.filter_names):
            col = t.values[:, j]
            ok = np.isfinite(col)
            if not ok.any():
                continue
            threshold = self.limits.get(name)
            marks = [] if threshold is None else [threshold]
            if name in RULES and RULES[name].kind == "abs_max" and threshold is not None:
                marks = [-threshold, threshold]
            lo, hi = np.percentile(col[ok], [0.5, 99.5]) if ok.sum() > 50 else (col[ok].min(), col[ok].max())
            lo, hi = float(min([lo, *marks])), float(max([hi, *marks]))
            if name == "duplicate":
                lo, hi = 0.0, 64.0
            if hi <= lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, HIST_BINS + 1)
            clipped = np.clip(col, lo, hi)
            kept = np.histogram(clipped[ok & t.kept], bins=edges)[0]
            rejected = np.histogram(clipped[ok & ~t.kept], bins=edges)[0]
            out[name] = {
                "lo": lo,
                "hi": hi,
                "kept": kept.tolist(),
                "rejected": rejected.tolist(),
                "marks": marks,
            }
        return out

    # --- reading ------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        self.reload_if_changed()
        with self._lock:
            t, d = self.table, self.decided
            effective = self._effective_kept()
            filters = [
                {
                    "name": name,
                    "label": LABELS.get(name, name),
                    "threshold": self.limits.get(name),
                    "rule": RULES[name].describe(self.limits.get(name)) if name in RULES else "",
                }
                for name in t.filter_names
            ]
            reasons = [
                {"name": name, "count": int(((t.reasons >> i) & 1).sum())}
                for i, name in enumerate(t.reason_names)
            ]
            return {
                "generation": self.generation,
                "name": self.root.resolve().name,
                "total": len(t),
                "counts": {
                    "kept": int(t.kept.sum()),
                    "rejected": int((~t.kept).sum()),
                    "keep": int((d == KEEP).sum()),
                    "reject": int((d == REJECT).sum()),
                    "effective_kept": int(effective.sum()),
                },
                "statuses": list(STATUSES),
                "filters": filters,
                "reasons": reasons,
                "histograms": self.histograms,
                "has_src": self.src is not None,
                "size": self.renderer.size,
            }

    def _effective_kept(self) -> NDArray[np.bool_]:
        t, d = self.table, self.decided
        return np.asarray((t.kept & (d != REJECT)) | (d == KEEP))

    def listing(
        self,
        status: str = "all",
        reason: str = "",
        sort: str = "order",
        order: str = "asc",
        offset: int = 0,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """The ids of the faces matching ``status`` and ``reason``, sorted; compact parallel arrays."""
        with self._lock:
            t, d = self.table, self.decided
            masks: dict[str, Callable[[], NDArray[np.bool_]]] = {
                "all": lambda: np.ones(len(t), dtype=bool),
                "kept": lambda: t.kept,
                "rejected": lambda: ~t.kept,
                "reviewed": lambda: d != 0,
                "overruled": lambda: (t.kept & (d == REJECT)) | (~t.kept & (d == KEEP)),
                "effective_kept": self._effective_kept,
                "effective_rejected": lambda: ~self._effective_kept(),
            }
            if status not in masks:
                raise HTTPError(HTTPStatus.BAD_REQUEST, f"unknown status {status!r}")
            mask = np.array(masks[status](), dtype=bool)
            if reason:
                if reason not in t.reason_names:
                    raise HTTPError(HTTPStatus.BAD_REQUEST, f"unknown reason {reason!r}")
                mask &= ((t.reasons >> t.reason_names.index(reason)) & 1).astype(bool)
            ids = np.flatnonzero(mask)
            if order not in ("asc", "desc"):
                raise HTTPError(HTTPStatus.BAD_REQUEST, "order must be asc or desc")
            value: NDArray[np.float64] | None = None
            if sort == "order":
                key = t.order[ids].astype(np.float64)
            elif sort in t.filter_names:
                value = t.values[ids, t.filter_names.index(sort)]
                key = np.abs(value) if sort in RULES and RULES[sort].kind == "abs_max" else value
            else:
                raise HTTPError(HTTPStatus.BAD_REQUEST, f"unknown sort {sort!r}")
            known = np.isfinite(key)
            ranked = np.argsort(key[known] if order == "asc" else -key[known], kind="stable")
            perm = np.concatenate([np.flatnonzero(known)[ranked], np.flatnonzero(~known)])
            ids = ids[perm]
            stop = len(ids) if limit is None else offset + limit
            page = ids[offset:stop]
            out: dict[str, Any] = {
                "generation": self.generation,
                "total": len(ids),
                "offset": offset,
                "ids": page.tolist(),
                "status": (~t.kept[page]).astype(np.int8).tolist(),
                "reasons": t.reasons[page].tolist(),
                "decision": d[page].tolist(),
            }
            if value is not None:
                vals = np.round(value[perm][offset:stop], 3)
                out["value"] = [None if not np.isfinite(v) else v for v in vals.tolist()]
            return out

    def face_id(self, text: str) -> int:
        if not text.isdigit() or int(text) >= len(self.table):
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no face {text!r}")
        return int(text)

    def detail(self, face_id: int) -> dict[str, Any]:
        with self._lock:
            t = self.table
            rec = t.record(face_id)
            key = t.keys[face_id]
            reasons = t.reason_list(face_id)
            filters = []
            for name, value in (rec.get("filters") or {}).items():
                threshold = self.limits.get(name)
                rule = RULES.get(name)
                filters.append(
                    {
                        "name": name,
                        "label": LABELS.get(name, name),
                        "value": value,
                        "threshold": threshold,
                        "rule": rule.describe(threshold) if rule else "",
                        "passed": name not in reasons,
                    }
                )
            duplicate = None
            found = t.nearest_kept(face_id, earlier="duplicate" in reasons)
            if found is not None:
                other, distance = found
                duplicate = {"id": other, "distance": distance, "source": t.keys[other][0]}
            decision = self.log.current.get(key)
            generation = self.generation
        width, height = self._source_size(key[0])
        return {
            "generation": generation,
            "id": face_id,
            "source": key[0],
            "face_index": key[1],
            "file_name": t.file_names[face_id],
            "status": "kept" if t.kept[face_id] else "rejected",
            "reasons": reasons,
            "decision": decision,
            "filters": filters,
            "record": rec,
            "duplicate": duplicate,
            "source_image": None if width is None else {"width": width, "height": height},
        }

    def _source_size(self, source: str) -> tuple[int | None, int | None]:
        path = self.renderer.source_path(source)
        if path is None:
            return None, None
        try:
            with Image.open(path) as im:
                w, h = im.size
                if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: rotated by 90°
                    w, h = h, w
        except (OSError, ValueError):
            return None, None
        return w, h

    def thumb(self, face_id: int) -> bytes:
        data = self.thumbs.get(self.table, face_id)
        if data is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, "no crop and no readable source photo for this face")
        return data

    def crop(self, face_id: int) -> tuple[bytes, str]:
        t = self.table
        name = t.file_names[face_id]
        if name:
            data = self.reader.crop_bytes(name)
            if data is not None:
                return data, "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png"
        pixels = self.renderer.render(t.record(face_id))
        if pixels is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, "no crop and no readable source photo for this face")
        return _encode(Image.fromarray(pixels), "PNG"), "image/png"

    def source(self, face_id: int) -> bytes:
        with self._lock:
            if face_id in self._sources:
                self._sources.move_to_end(face_id)
                return self._sources[face_id]
        image = self.renderer.load(self.table.keys[face_id][0])
        if image is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, "source photo not found inside SRC (see --src)")
        pil = Image.fromarray(image)
        pil.thumbnail((SOURCE_MAX_SIDE, SOURCE_MAX_SIDE), Image.Resampling.LANCZOS)
        data = _encode(pil, "JPEG")
        with self._lock:
            self._sources[face_id] = data
            while len(self._sources) > 16:
                self._sources.popitem(last=False)
        return data

    # --- writing ------------------------------------------------------------------------------------

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        decision = body.get("decision")
        if decision not in ("keep", "reject", None):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "decision must be 'keep', 'reject' or null")
        face = body.get("id")
        with self._lock:
            if body.get("generation") != self.generation:
                raise HTTPError(HTTPStatus.CONFLICT, "the dataset was reloaded: refresh the page")
            if not isinstance(face, int) or not 0 <= face < len(self.table):
                raise HTTPError(HTTPStatus.NOT_FOUND, f"no face {face!r}")
            key = self.table.keys[face]
            status = "kept" if self.table.kept[face] else "rejected"
            self.log.record(key, decision, status=status)
            self.decided[face] = {None: 0, "keep": KEEP, "reject": REJECT}[decision]
            effective = int(self._effective_kept().sum())
            return {
                "id": face,
                "decision": decision,
                "counts": {
                    "keep": int((self.decided == KEEP).sum()),
                    "reject": int((self.decided == REJECT).sum()),
                    "effective_kept": effective,
                },
            }


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(out, format="JPEG", quality=85)
    else:
        image.save(out, format=fmt)
    return out.getvalue()


# --- HTTP -----------------------------------------------------------------------------------------


class ReviewServer(ThreadingHTTPServer):
    """``make_server`` returns one: ``.url``, ``.token``, ``.start()`` (a background thread),
    ``.serve_forever()``, ``.shutdown()`` / ``.close()``; also a context manager."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, app: ReviewApp, host: str, port: int, *, quiet: bool = True) -> None:
        self.app = app
        self.token = secrets.token_urlsafe(32)
        self.quiet = quiet
        self.address_family = _family(host)
        super().__init__((host, port), _Handler)
        self.host = host
        self.port = int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self.allowed_hosts = set(LOOPBACK_NAMES) | {host.lower()}
        self.wildcard = _is_wildcard(host)
        self._thread: threading.Thread | None = None
        self._index = (STATIC / "index.html").read_text(encoding="utf-8")

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.serve_forever, name="faceprep-review", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> ReviewServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index_html(self) -> bytes:
        from html import escape

        page = self._index.replace("{{TOKEN}}", self.token).replace("{{NAME}}", escape(self.app.root.name))
        return page.encode("utf-8")

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's Host header names this server (DNS rebinding protection)."""
        if not header:
            return False
        header = header.strip().lower()
        if header.startswith("["):
            name, _, rest = header[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            name, _, port = header.rpartition(":") if ":" in header else (header, "", "")
        if port != str(self.port):
            return False
        if name in self.allowed_hosts:
            return True
        if self.wildcard:  # bound to every interface: any IP literal of this machine, no DNS names
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                return True
        return False


def _family(host: str) -> Any:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"
    server_version = "faceprep-review"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _handle(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        try:
            if not self.server.host_allowed(self.headers.get("Host")):
                raise HTTPError(HTTPStatus.FORBIDDEN, "unexpected Host header")
            parts = urlsplit(self.path)
            route(unquote(parts.path), parse_qs(parts.query))
        except HTTPError as exc:
            self._json({"error": str(exc)}, exc.status)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            self._json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            self._send(self.server.index_html(), "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(b"", "image/x-icon", status=HTTPStatus.NO_CONTENT)
        elif path.startswith("/static/"):
            name = path[len("/static/") :]
            if name not in STATIC_FILES:
                raise HTTPError(HTTPStatus.NOT_FOUND, "not found")
            self._send((STATIC / name).read_bytes(), STATIC_FILES[name], cache="no-cache")
        elif path == "/api/summary":
            self._json(app.summary())
        elif path == "/api/faces":
            q = {k: v[-1] for k, v in query.items()}
            try:
                offset = max(0, int(q.get("offset", 0)))
                limit = int(q["limit"]) if q.get("limit") else None
            except ValueError as exc:
                raise HTTPError(HTTPStatus.BAD_REQUEST, "offset and limit must be integers") from exc
            self._json(
                app.listing(
                    status=q.get("status", "all"),
                    reason=q.get("reason", ""),
                    sort=q.get("sort", "order"),
                    order=q.get("order", "asc"),
                    offset=offset,
                    limit=limit,
                )
            )
        elif path.startswith("/api/face/"):
            self._json(app.detail(app.face_id(path[len("/api/face/") :])))
        elif path.startswith("/thumb/"):
            self._send(app.thumb(app.face_id(path[len("/thumb/") :])), "image/jpeg", cache="private")
        elif path.startswith("/crop/"):
            data, ctype = app.crop(app.face_id(path[len("/crop/") :]))
            self._send(data, ctype, cache="private")
        elif path.startswith("/source/"):
            self._send(app.source(app.face_id(path[len("/source/") :])), "image/jpeg", cache="private")
        else:
            raise HTTPError(HTTPStatus.NOT_FOUND, "not found")

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        token = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise HTTPError(HTTPStatus.FORBIDDEN, f"missing or wrong {TOKEN_HEADER}")
        origin = self.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != f"http://{self.headers.get('Host')}":
            raise HTTPError(HTTPStatus.FORBIDDEN, "cross-origin request")
        if self.headers.get_content_type() != "application/json":
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from exc
        if not 0 < length <= MAX_BODY:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large or empty")
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "body is not JSON") from exc
        if path != "/api/decision" or not isinstance(body, dict):
            raise HTTPError(HTTPStatus.NOT_FOUND, "not found")
        self._json(self.server.app.decide(body))

    def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        data = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default).encode()
        self._send(data, "application/json", status=status)

    def _send(self, data: bytes, ctype: str, *, status: HTTPStatus = HTTPStatus.OK, cache: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache == "private" else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'",
        )
        self.end_headers()
        self.wfile.write(data)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def make_server(
    dst: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    src: str | os.PathLike[str] | None = None,
    quiet: bool = True,
) -> ReviewServer:
    """A review server for the dataset at ``dst``, bound but not yet serving (``.start()`` or
    ``.serve_forever()``). ``port=0`` picks a free port; ``.url`` is the page's address. A ``host``
    that is not a loopback address is allowed but warned about on stderr. Raises ValueError if ``dst``
    is not a faceprep dataset, OSError if the port is taken."""
    warn_if_exposed(host)
    return ReviewServer(ReviewApp(dst, src), host, port, quiet=quiet)


def warn_if_exposed(host: str) -> bool:
    """Warn on stderr when ``host`` is not a loopback address; returns whether it warned."""
    if _is_loopback(host):
        return False
    print(
        f"faceprep review: warning: serving on {host}, not only this computer: anyone who can reach "
        "that address can see these photos (decisions still need the page's token)",
        file=sys.stderr,
    )
    return True


def serve(
    dst: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    src: str | os.PathLike[str] | None = None,
    open_browser: bool = True,
) -> None:
    """Serve the review page for ``dst`` until interrupted (Ctrl-C); open it in the browser."""
    server = make_server(dst, host=host, port=port, src=src)
    app = server.app
    where = (
        f"sources in {app.src}" if app.src else "no SRC known: rejected faces show no picture (pass --src)"
    )
    print(f"faceprep review: {len(app.table)} faces of {app.root} ({where})", file=sys.stderr)
    print(f"faceprep review: serving {server.url}  (Ctrl-C to stop)", file=sys.stderr)
    if open_browser:
        threading.Timer(0.3, webbrowser.open, args=(server.url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
