"""The library entry point: photo in, aligned and filtered faces out.

>>> pipe = Pipeline.from_names(detector="auto", aligner="ffhq", fill="mirror-blur", size=256)
>>> crops = pipe(image, source="party.jpg")          # every face, kept and rejected (array or PIL)
>>> kept = [c for c in crops if c.kept]                 # c.record() is the metadata.jsonl line

``Pipeline`` is what ``faceprep crop`` runs in each worker; the CLI adds only the file walk, the
near-duplicate check across the whole run and the writing (``faceprep.dataset``). A ``Pipeline``
pickles as its config and is rebuilt on load, so ``multiprocessing.Pool.map(pipe, images)`` and
``datasets.Dataset.map(..., num_proc=N)`` work (each process loads its own model; the
near-duplicate index starts empty there).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from faceprep import filters, plugins
from faceprep.detectors import check_image
from faceprep.filters import DuplicateIndex, FilterThresholds
from faceprep.geometry import MAX_SIZE, MIN_SIZE
from faceprep.imageio import from_pil, load_image
from faceprep.rotation import with_rotation_correction
from faceprep.types import Detection, FaceCrop, ImageArray, ImageLoadError, SourceError


class DetectorFallbackWarning(UserWarning):
    """``detector="auto"`` could not use the preferred detector and fell back to another one."""


def route_options(
    stage_names: Mapping[plugins.Kind, str], options: Mapping[str, Any]
) -> dict[plugins.Kind, dict[str, Any]]:
    """Split ``options`` between the stages by the parameters their factories declare.

    An option goes to the one stage that names it; if none names it, to the one stage taking
    ``**kwargs``. ValueError (naming the option and the stages) when no stage or several take it.
    """
    declared = {
        kind: plugins.factory_options(plugins.resolve(kind, name).factory)
        for kind, name in stage_names.items()
    }
    routed: dict[plugins.Kind, dict[str, Any]] = {kind: {} for kind in stage_names}
    for option, value in options.items():
        named = [k for k, d in declared.items() if d is not None and option in d[0]]
        takers = named or [k for k, d in declared.items() if d is not None and d[1]]
        stages = ", ".join(f"{k} {stage_names[k]!r}" for k in (takers or stage_names))
        if not takers:
            raise ValueError(f"unknown option {option!r}: none of the stages takes it ({stages})")
        if len(takers) > 1:
            raise ValueError(
                f"ambiguous option {option!r}: taken by {stages}; pass it in "
                + " or ".join(f"{k}_options=" for k in takers)
            )
        routed[takers[0]][option] = value
    return routed


def resolve_detector(name: str) -> tuple[str, str | None]:
    """Resolve ``auto`` to a concrete detector name.

    Returns ``(name, note)`` where ``note`` is a one-line explanation when a higher-priority detector
    was skipped because it cannot run here (e.g. no SCRFD model and no network), else None.
    """
    if name != "auto":
        return name, None
    chosen = plugins.resolve("detector", "auto")
    skipped = [
        f"{spec.name} unavailable ({reason})"
        for spec in plugins.stages("detector").values()
        if spec.priority > chosen.priority and (reason := plugins.unavailable_reason(spec))
    ]
    return chosen.name, (f"{'; '.join(skipped)}; using {chosen.name}" if skipped else None)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that decides what a pipeline produces (picklable: sent to worker processes)."""

    detector: str = "auto"
    aligner: str = "ffhq"
    fill: str = "mirror-blur"
    size: int = 256
    detector_options: Mapping[str, Any] = field(default_factory=dict)
    aligner_options: Mapping[str, Any] = field(default_factory=dict)
    fill_options: Mapping[str, Any] = field(default_factory=dict)
    thresholds: FilterThresholds = field(default_factory=FilterThresholds)
    rotation_fix: bool = True
    dedup: bool = True  # track near-duplicates inside this Pipeline (the CLI does it in its writer)

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE}, got {self.size}")


@dataclass(frozen=True)
class FileResult:
    """What processing one source file produced: faces (kept and rejected) or an error."""

    path: str
    source: str
    crops: tuple[FaceCrop, ...] = ()
    error: SourceError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Pipeline:
    """Detect → align → fill + resample → filter, for one image at a time."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        detector = plugins.create("detector", config.detector, **dict(config.detector_options))
        self.detector = with_rotation_correction(detector, enabled=config.rotation_fix)
        self.thresholds = config.thresholds.for_detector(detector)  # min_score: the detector's default
        self.aligner = plugins.create("aligner", config.aligner, **dict(config.aligner_options))
        self.fill = plugins.create("fill", config.fill, **dict(config.fill_options))
        self.duplicates = DuplicateIndex(config.thresholds.dedup_distance) if config.dedup else None

    def __reduce__(self) -> tuple[type[Pipeline], tuple[PipelineConfig]]:
        """Pickle as the config: the receiving process rebuilds the stages (and loads the model)."""
        return (type(self), (self.config,))

    @classmethod
    def from_names(
        cls,
        detector: str = "auto",
        aligner: str = "ffhq",
        fill: str = "mirror-blur",
        size: int = 256,
        *,
        thresholds: FilterThresholds | None = None,
        rotation_fix: bool = True,
        dedup: bool = True,
        detector_options: Mapping[str, Any] | None = None,
        aligner_options: Mapping[str, Any] | None = None,
        fill_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Pipeline:
        """Build a pipeline from stage names.

        Each of ``options`` goes to the stage whose factory declares it: with the built-ins
        ``rotate``, ``scale`` and ``shift`` go to the aligner and ``model``, ``score_threshold``,
        ``num_threads`` to the detector. An option no stage takes, or that several take, is a
        ValueError; ``detector_options=`` / ``aligner_options=`` / ``fill_options=`` pass options to
        one stage explicitly. ``detector="auto"`` picks the best detector that can run here and warns
        (``DetectorFallbackWarning``, one line) when it had to fall back.
        """
        name, note = resolve_detector(detector)
        if note:
            warnings.warn(note, DetectorFallbackWarning, stacklevel=2)
        routed = route_options({"detector": name, "aligner": aligner, "fill": fill}, options)
        config = PipelineConfig(
            detector=name,
            aligner=aligner,
            fill=fill,
            size=size,
            detector_options={**(detector_options or {}), **routed["detector"]},
            aligner_options={**(aligner_options or {}), **routed["aligner"]},
            fill_options={**(fill_options or {}), **routed["fill"]},
            thresholds=thresholds or FilterThresholds(),
            rotation_fix=rotation_fix,
            dedup=dedup,
        )
        return cls(config)

    def detect(self, image: ImageArray) -> list[Detection]:
        """Faces in ``image``, highest score first (ties broken by position, so indices are stable)."""
        found = self.detector.detect(image)
        return sorted(found, key=lambda d: (-float(d.score), float(d.box[1]), float(d.box[0])))

    def __call__(self, image: ImageArray | Image.Image, source: str = "") -> list[FaceCrop]:
        """Every face in ``image`` as a FaceCrop with its filter results (rejected ones included).

        ``image``: an (H, W, 3) uint8 RGB array, or a PIL image (converted like ``load_image``
        converts a file: EXIF orientation applied, then the same mode rules).
        """
        from faceprep.warp import face_canvas, fill_canvases, warp_canvas

        if isinstance(image, Image.Image):
            image = from_pil(image)
        check_image(image)
        faces = []
        for index, det in enumerate(self.detect(image)):
            try:
                quad = self.aligner.align(det, image.shape[:2])
                canvas = face_canvas(image, quad, self.config.size, source=source, face_index=index)
            except ValueError:  # degenerate landmarks, or a quad shifted entirely off the photo
                continue
            faces.append((index, det, quad, canvas))
        filled_canvases = fill_canvases(self.fill, [face[3] for face in faces])  # one batch for the photo
        crops: list[FaceCrop] = []
        for (index, det, quad, canvas), filled_canvas in zip(faces, filled_canvases, strict=True):
            pixels, filled = warp_canvas(canvas, filled_canvas), canvas.filled
            results = filters.face_filters(det, pixels, filled, self.thresholds)
            recorder = getattr(self.fill, "record", None) if filled > 0 else None
            fill_record = recorder(source, index) if callable(recorder) else None
            crop = FaceCrop(pixels, det, quad, index, float(filled), results, source, fill_record)
            if self.duplicates is not None:
                crop, _ = check_duplicate(crop, self.duplicates)
            crops.append(crop)
        return crops

    def process_file(self, path: str | os.PathLike[str], source: str | None = None) -> FileResult:
        """Load and process one file; any failure becomes a ``SourceError`` naming the file and reason."""
        name = str(path)
        source = name if source is None else source
        start = time.perf_counter()
        try:
            image = load_image(name)
            crops = tuple(self(image, source=source))
        except ImageLoadError as exc:
            return FileResult(name, source, error=SourceError(name, exc.reason), seconds=_since(start))
        except Exception as exc:  # one bad photo must not end a long run; the reason is recorded
            reason = f"processing failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            return FileResult(name, source, error=SourceError(name, reason), seconds=_since(start))
        return FileResult(name, source, crops=crops, seconds=_since(start))


def check_duplicate(crop: FaceCrop, index: DuplicateIndex) -> tuple[FaceCrop, str]:
    """Add the ``duplicate`` filter result to ``crop`` (replacing an earlier one) and return its phash.

    If the crop is kept after this check, its hash joins ``index`` so later faces are compared with it.
    """
    hash_hex = str(filters.phash(crop.image))
    others = tuple(f for f in crop.filters if f.name != "duplicate")
    checked = dataclasses.replace(crop, filters=(*others, index.check(hash_hex)))
    if checked.kept:
        index.add(hash_hex)
    return checked, hash_hex


def _since(start: float) -> float:
    return time.perf_counter() - start
