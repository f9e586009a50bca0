"""Re-thresholding a dataset from the values it already stores: ``faceprep refilter DST --max-yaw 35``.

Every filter's value is in each face's record, so new thresholds need no re-detection. The near-duplicate
check is the one value that depends on which faces are kept, so it is replayed: faces are visited in the
order the run wrote them and each is compared (by its stored ``phash``) with the faces kept before it,
exactly as :class:`faceprep.dataset.DatasetWriter` did. Faces the user deleted by hand
(``deleted.jsonl``) stay out, but still occupy their place in that replay, so their duplicates stay
rejected as they were.

What moves where:

* a kept face that becomes rejected leaves ``metadata.jsonl`` for ``rejected.jsonl``, and its crop is
  moved to ``DST/.faceprep-rejected/`` (not deleted: loosening the threshold again brings it back);
* a rejected face that becomes kept needs a crop: it is moved back from ``.faceprep-rejected/`` when it
  is there, else rendered from the source photo (SRC: ``src=`` or ``"src"`` in faceprep.json) with the
  recorded quad, size and fill. If some cannot be, nothing is changed and :class:`RefilterError` says
  which;
* ``faceprep.json`` records the new thresholds, so resuming ``faceprep crop`` with them is accepted.

Crash safety: the dataset lock is held; crops are placed (temporary name, then ``os.replace``, named in
the journal first) before ``metadata.jsonl`` lists them; both JSONL files are rewritten whole (temporary
file + ``os.replace``) in an order that never leaves a face out of both; refilter with the same thresholds
again finishes an interrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from faceprep import atomic

FILTER_ORDER = ("score", "eye_distance", "filled", "blur", "yaw", "roll", "duplicate")
PARKED_DIR = ".faceprep-rejected"  # crops of faces a refilter rejected, kept for a later loosening

RuleKind = Literal["min", "max", "abs_max", "above"]


@dataclass(frozen=True)
class Rule:
    """How a filter's stored value is compared with its threshold (a FilterThresholds field)."""

    option: str
    kind: RuleKind

    def passes(self, value: float, threshold: float | None) -> bool:
        if threshold is None or not math.isfinite(value):
            return True
        if self.kind == "min":
            return value >= threshold
        if self.kind in ("max", "abs_max"):  # as faceprep.filters._at_most: on the absolute value
            return abs(value) <= threshold
        return value > threshold  # duplicate: the distance must exceed dedup_distance

    def describe(self, threshold: float | None) -> str:
        if threshold is None:
            return "off"
        t = f"{threshold:g}"
        return {"min": f"≥ {t}", "max": f"≤ {t}", "abs_max": f"|x| ≤ {t}", "above": f"> {t}"}[self.kind]


RULES: dict[str, Rule] = {
    "score": Rule("min_score", "min"),
    "eye_distance": Rule("min_eye_dist", "min"),
    "filled": Rule("max_filled", "max"),
    "blur": Rule("min_blur", "min"),
    "yaw": Rule("max_yaw", "abs_max"),
    "roll": Rule("max_roll", "abs_max"),
    "duplicate": Rule("dedup_distance", "above"),
}
THRESHOLD_OPTIONS = tuple(rule.option for rule in RULES.values())


class RefilterError(RuntimeError):
    """The refilter cannot be applied as asked (nothing was changed)."""


def recorded_thresholds(options: Mapping[str, Any]) -> dict[str, Any]:
    """The threshold options recorded in a faceprep.json dict (FilterThresholds defaults if absent)."""
    from faceprep.filters import FilterThresholds

    opts = options.get("options", options)
    defaults = asdict(FilterThresholds())
    return {name: opts.get(name, defaults[name]) for name in THRESHOLD_OPTIONS}


def resolved_thresholds(thresholds: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, float | None]:
    """Numbers per filter name: ``min_score="detector"`` becomes the recorded detector's default."""
    from faceprep.filters import DEFAULT_MIN_SCORE, DETECTOR_DEFAULT

    out: dict[str, float | None] = {}
    for name, rule in RULES.items():
        value = thresholds.get(rule.option)
        if value == DETECTOR_DEFAULT:
            value = _detector_default(options, DEFAULT_MIN_SCORE)
        out[name] = None if value is None else float(value)
    return out


def _detector_default(options: Mapping[str, Any], fallback: float) -> float:
    from faceprep import plugins

    opts = options.get("options", options)
    name = opts.get("detector") or (options.get("detector") or {}).get("name")
    try:
        factory = plugins.resolve("detector", str(name)).factory
    except Exception:  # a detector plugin no longer installed: the documented fallback
        return fallback
    return float(getattr(factory, "default_min_score", fallback))


def evaluate(filters: Mapping[str, float], thresholds: Mapping[str, float | None]) -> list[str]:
    """The names of the filters whose stored value fails its threshold, in the record's order."""
    return [
        name
        for name, value in filters.items()
        if name in RULES and not RULES[name].passes(float(value), thresholds.get(name))
    ]


@dataclass
class RefilterSummary:
    """What a refilter changed (or would change, with ``dry_run``)."""

    before: dict[str, Any]
    after: dict[str, Any]
    kept_before: int = 0
    kept_after: int = 0
    newly_rejected: Counter[str] = field(default_factory=Counter)  # by the first failing filter
    newly_kept: int = 0
    restored: int = 0  # crops moved back from .faceprep-rejected/
    rendered: int = 0  # crops rendered from the source photo
    parked: int = 0  # crops moved to .faceprep-rejected/
    dry_run: bool = False

    def lines(self) -> list[str]:
        changed = [
            f"--{k.replace('_', '-')} {_show(self.before[k])} -> {_show(v)}"
            for k, v in self.after.items()
            if self.before.get(k) != v
        ]
        reasons = ", ".join(f"{k} {n}" for k, n in self.newly_rejected.most_common()) or "none"
        verb = "would change" if self.dry_run else "changed"
        return [
            f"thresholds  {'; '.join(changed) or 'unchanged'}",
            f"kept        {self.kept_before} -> {self.kept_after}",
            f"{verb:<11} {sum(self.newly_rejected.values())} newly rejected ({reasons}), "
            f"{self.newly_kept} newly kept",
            f"crops       {self.parked} moved to {PARKED_DIR}/, {self.restored} moved back, "
            f"{self.rendered} rendered from source",
        ]


def refilter(
    dst: str | os.PathLike[str],
    thresholds: Mapping[str, float | int | str | None],
    *,
    src: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
) -> RefilterSummary:
    """Apply new ``thresholds`` (FilterThresholds field names: ``{"max_yaw": 35, "min_blur": None}``;
    options not named keep their recorded value) to the dataset at ``dst`` without re-detecting.

    ``src``: the photos folder, needed only when a face without a crop becomes kept (default: ``"src"``
    recorded in faceprep.json). Raises ValueError for an unknown option or invalid value,
    :class:`RefilterError` when a newly kept face cannot be rendered (nothing changed), and
    :class:`faceprep.run_lock.DatasetLockedError` while a ``faceprep crop`` run holds the folder.
    """
    from faceprep.filters import FilterThresholds
    from faceprep.run_lock import DatasetLock

    root = Path(dst)
    unknown = sorted(set(thresholds) - set(THRESHOLD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown threshold option(s) {unknown}; known: {', '.join(THRESHOLD_OPTIONS)}")
    if not (root / "done.jsonl").is_file() and not (root / "metadata.jsonl").is_file():
        raise ValueError(f"{root} is not a faceprep dataset folder (no done.jsonl or metadata.jsonl)")
    with DatasetLock(root):
        from faceprep.review.render import recorded_options

        options = recorded_options(root)
        before = recorded_thresholds(options)
        after = {**before, **thresholds}
        FilterThresholds(**after)  # validates (ValueError names the bad one)
        plan = _Plan.make(root, options, before, after, src)
        if not dry_run:
            plan.apply()
        plan.summary.dry_run = dry_run
        return plan.summary


class _Plan:
    """The faces of a dataset re-evaluated under new thresholds, and the moves that follows from it."""

    def __init__(self, root: Path, options: dict[str, Any], summary: RefilterSummary) -> None:
        self.root = root
        self.options = options
        self.summary = summary
        self.kept: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.to_place: list[tuple[dict[str, Any], str]] = []  # (record, how: "restore" | "render")
        self.to_park: list[str] = []
        self.renderer: Any = None

    @classmethod
    def make(
        cls,
        root: Path,
        options: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        src: str | os.PathLike[str] | None,
    ) -> _Plan:
        from faceprep.dataset import DELETED, face_file_name, read_jsonl
        from faceprep.filters import DuplicateIndex
        from faceprep.review.render import CropRenderer, find_src
        from faceprep.review.store import FolderReader

        plan = cls(root, options, RefilterSummary(before=before, after=after))
        fmt = str(options.get("options", {}).get("format") or _guess_format(root))
        limits = resolved_thresholds(after, options)
        order = FolderReader(root).run_order()
        faces: dict[tuple[str, int], tuple[bool, dict[str, Any]]] = {}
        for name, was_kept in (("metadata.jsonl", True), ("rejected.jsonl", False)):
            for rec in read_jsonl(root / name):
                key = (str(rec.get("source")), int(rec.get("face_index", 0)))
                if key not in faces or was_kept:  # listed twice (interrupted refilter): the kept one
                    faces[key] = (was_kept, rec)
        deleted = {(str(r.get("source")), int(r.get("face_index", 0))): r for r in read_jsonl(root / DELETED)}
        everything = [(k, *v, False) for k, v in faces.items()]
        everything += [(k, False, r, True) for k, r in deleted.items() if k not in faces]
        everything.sort(key=lambda item: (order.get(item[0][0], len(order)), item[0][1]))
        index = DuplicateIndex(None if limits["duplicate"] is None else int(limits["duplicate"]))
        plan.summary.kept_before = sum(1 for was_kept, _ in faces.values() if was_kept)
        renderer = CropRenderer(find_src(root, src), options)
        missing: list[str] = []
        for key, was_kept, rec, is_deleted in everything:
            values = dict(rec.get("filters") or {})
            hash_hex = rec.get("phash")
            if "duplicate" in values and isinstance(hash_hex, str):
                values["duplicate"] = float(index.nearest(hash_hex))
            failing = evaluate(values, limits)
            if not failing and isinstance(hash_hex, str):
                index.add(hash_hex)
            if is_deleted:
                continue
            name = rec.get("file_name") or face_file_name(key[0], key[1], fmt)  # type: ignore[arg-type]
            body = {k: v for k, v in rec.items() if k != "file_name"}
            body.update(filters=values, rejected_by=failing)
            if failing:
                plan.rejected.append(body)
                if was_kept:
                    plan.summary.newly_rejected[failing[0]] += 1
                if (root / name).is_file():
                    plan.to_park.append(name)  # includes a crop an interrupted refilter left behind
                continue
            plan.kept.append({"file_name": name, **body})
            if was_kept or (root / name).is_file():
                continue  # a kept crop missing from disk was deleted by hand: not brought back
            plan.summary.newly_kept += 1
            if (root / PARKED_DIR / name).is_file():
                plan.to_place.append((plan.kept[-1], "restore"))
            elif renderer.source_path(key[0]) is not None:
                plan.to_place.append((plan.kept[-1], "render"))
            else:
                missing.append(key[0])
        plan.summary.kept_after = len(plan.kept)
        plan.summary.parked = len(plan.to_park)
        plan.summary.restored = sum(1 for _, how in plan.to_place if how == "restore")
        plan.summary.rendered = sum(1 for _, how in plan.to_place if how == "render")
        if missing:
            where = renderer.src or "no SRC known (pass --src, or record src in faceprep.json)"
            raise RefilterError(
                f"{len(missing)} newly kept face(s) have no crop and their source photo cannot be read "
                f"(SRC: {where}; first: {missing[0]}); nothing changed"
            )
        plan.renderer = renderer
        return plan

    def apply(self) -> None:
        from faceprep.review.apply import append_journal, save_crop

        root = self.root
        fmt = str(self.options.get("options", {}).get("format") or _guess_format(root))
        quality = int(self.options.get("options", {}).get("jpeg_quality") or 95)
        if self.to_place:
            by_source: dict[str, list[str]] = {}
            for rec, _ in self.to_place:
                by_source.setdefault(str(rec["source"]), []).append(str(rec["file_name"]))
            append_journal(root, [{"source": s, "writing": names} for s, names in by_source.items()])
            for rec, how in self.to_place:
                name = str(rec["file_name"])
                if how == "restore":
                    os.replace(root / PARKED_DIR / name, root / name)
                else:
                    pixels = self.renderer.render(rec)
                    if pixels is None:
                        raise RefilterError(f"could not render {name} from {rec['source']}")
                    save_crop(root, name, pixels, fmt, quality)
            atomic.fsync_path(root)
        placed = {str(rec["file_name"]) for rec, _ in self.to_place}
        newly_kept = [
            {k: v for k, v in rec.items() if k != "file_name"}
            for rec in self.kept
            if str(rec["file_name"]) in placed
        ]
        _write_jsonl(root, "rejected.jsonl", self.rejected + newly_kept)  # never in neither
        _write_jsonl(root, "metadata.jsonl", self.kept)
        _write_jsonl(root, "rejected.jsonl", self.rejected)
        if self.to_park:
            (root / PARKED_DIR).mkdir(exist_ok=True)
            for name in self.to_park:
                os.replace(root / name, root / PARKED_DIR / name)
            atomic.fsync_path(root)
        self._record_thresholds()

    def _record_thresholds(self) -> None:
        path = self.root / "faceprep.json"
        if not path.is_file():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        before, after = self.summary.before, self.summary.after
        if before == after:
            return
        data.setdefault("options", {}).update(after)
        data.setdefault("refiltered", []).append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "changed": {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v},
            }
        )
        atomic.write_text(path, json.dumps(data, indent=2, ensure_ascii=True) + "\n")


def _write_jsonl(root: Path, name: str, records: list[dict[str, Any]]) -> None:
    from faceprep.dataset import _dumps

    atomic.write_text(root / name, "".join(_dumps(r) for r in records))


def _guess_format(root: Path) -> str:
    from faceprep.dataset import read_jsonl

    for rec in read_jsonl(root / "metadata.jsonl")[:1]:
        if str(rec.get("file_name", "")).endswith(".jpg"):
            return "jpg"
    return "png"


def _show(value: Any) -> str:
    return "off" if value is None else str(value)
