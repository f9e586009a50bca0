"""``DST/faceprep.json``: the options that decide what a dataset holds, so a resume cannot mix them.

The first run on a folder writes the file (atomically); every later run compares its own options with
it and refuses, naming each differing option, when they differ: 128 px and 256 px crops, PNG and
JPEG, or faces from two detectors never end up in one dataset. Options that do not change the output
(``--workers``, ``--limit``, the contact sheet) are not recorded. The detector model is compared by its
sha256, not its path, so moving the model file is fine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from faceprep import __version__, atomic
from faceprep.models import sha256_file
from faceprep.pipeline import PipelineConfig

OPTIONS_FILE = "faceprep.json"
_NOT_COMPARED = frozenset({"model", "num_threads"})  # the model is compared by hash; threads: speed only


class OptionsMismatchError(ValueError):
    """A resume asked for other output-affecting options than the dataset was made with."""


def detector_identity(detector: object) -> dict[str, Any]:
    """Name, and model file with its sha256 when the detector has one (``model_path``)."""
    inner = getattr(detector, "inner", detector)  # through the rotation-correcting wrapper
    identity: dict[str, Any] = {"name": str(getattr(inner, "name", type(inner).__name__))}
    model = getattr(inner, "model_path", None)
    if model is not None and Path(model).is_file():
        identity["model"] = str(model)
        identity["model_sha256"] = sha256_file(Path(model))
    return identity


def run_options(
    config: PipelineConfig,
    *,
    image_format: str,
    jpeg_quality: int,
    detector: Mapping[str, Any],
    output: str = "folder",
) -> dict[str, Any]:
    """The output-affecting options of a run, keyed like the CLI flags that set them."""
    options: dict[str, Any] = {
        "size": config.size,
        "format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpg" else None,
        "output": output,
        "detector": config.detector,
        "detector_model_sha256": detector.get("model_sha256"),
        "detector_options": {k: v for k, v in config.detector_options.items() if k not in _NOT_COMPARED},
        "align": config.aligner,
        "align_options": dict(config.aligner_options),
        "fill": config.fill,
        "fill_options": dict(config.fill_options),
        "rotation_fix": config.rotation_fix,
        **asdict(config.thresholds),
    }
    return _plain(options)


def check_or_record(
    dst: Path, options: Mapping[str, Any], detector: Mapping[str, Any], src: str | None = None
) -> str | None:
    """Compare ``options`` with ``dst/faceprep.json`` (raise on a difference) or write it if absent.

    ``src``, the absolute source folder the records' ``source`` names are relative to, is recorded at
    the top level (not an option: a moved SRC is fine) and updated when it changed.

    Returns a one-line note for the user when there is something to say (an older dataset without the
    file, another faceprep version), else None.
    """
    path = dst / OPTIONS_FILE
    if not path.is_file():
        _write(path, _record(options, detector, src))
        if (dst / "done.jsonl").is_file():
            return f"{dst} has no {OPTIONS_FILE} (an older faceprep made it): recorded this run's options"
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        before = recorded["options"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OptionsMismatchError(
            f"{path}: unreadable ({exc}); cannot check the options of a resume"
        ) from exc
    differ = [
        f"--{key.replace('_', '-')} was {_show(before.get(key))}, now {_show(value)}"
        for key, value in options.items()
        if before.get(key) != value
    ]
    differ += [
        f"--{k.replace('_', '-')} was {_show(v)}, now unset" for k, v in before.items() if k not in options
    ]
    if differ:
        raise OptionsMismatchError(
            f"{dst} was made with other options ({'; '.join(differ)}): resuming would mix them in one "
            "dataset. Use the same options, or another output folder"
        )
    if src is not None and recorded.get("src") != src:
        _write(path, {**recorded, "src": src})
    version = recorded.get("faceprep_version")
    if version != __version__:
        return f"{dst} was made by faceprep {version}; this is {__version__}"
    return None


def _record(options: Mapping[str, Any], detector: Mapping[str, Any], src: str | None) -> dict[str, Any]:
    return {
        "faceprep_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "src": src,
        "detector": dict(detector),
        "options": dict(options),
    }


def _write(path: Path, record: Mapping[str, Any]) -> None:
    atomic.write_text(path, json.dumps(record, indent=2, ensure_ascii=True) + "\n")


def _plain(value: Any) -> Any:
    """JSON round trip, so options compare equal to what was read back from the file."""
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    return "off" if value is None else json.dumps(value)
