"""Plugin manager: built-in stages first, then everything in the ``faceprep`` entry-point group.

Callers use the small typed facade here (``stages``, ``create``) and never touch pluggy directly.
Set ``FACEPREP_DISABLE_ENTRYPOINTS=1`` to load only the built-ins (useful in tests).
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any, Literal

import pluggy

from faceprep import hookspecs
from faceprep.hookspecs import StageSpec

Kind = Literal["detector", "aligner", "fill"]
KINDS: tuple[Kind, ...] = ("detector", "aligner", "fill")
_HOOKS: dict[Kind, str] = {
    "detector": "faceprep_detectors",
    "aligner": "faceprep_aligners",
    "fill": "faceprep_fills",
}

DEFAULT_PLUGINS = (
    "faceprep.builtin.scrfd",
    "faceprep.builtin.aligners",
    "faceprep.builtin.fills",
)


class UnknownStageError(KeyError):
    """A stage name that no installed plugin provides."""

    def __str__(self) -> str:
        return str(self.args[0])


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if not os.environ.get("FACEPREP_DISABLE_ENTRYPOINTS"):
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm


def stages(kind: Kind) -> dict[str, StageSpec]:
    """All stages of one kind, by name. Raises ValueError if two plugins claim one name."""
    hook = getattr(get_plugin_manager().hook, _HOOKS[kind])
    found: dict[str, StageSpec] = {}
    for specs in hook():
        for spec in specs:
            if spec.name in found:
                raise ValueError(f"two plugins register the {kind} {spec.name!r}")
            found[spec.name] = spec
    return found


def unavailable_reason(spec: StageSpec) -> str | None:
    return spec.available() if spec.available is not None else None


def resolve(kind: Kind, name: str) -> StageSpec:
    """The spec for ``name``; ``auto`` picks the available stage with the highest priority."""
    specs = stages(kind)
    if name == "auto":
        ready = [s for s in specs.values() if unavailable_reason(s) is None]
        if not ready:
            reasons = "; ".join(f"{s.name}: {unavailable_reason(s)}" for s in specs.values())
            raise UnknownStageError(f"no {kind} can run here ({reasons})")
        return max(ready, key=lambda s: s.priority)
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise UnknownStageError(f"unknown {kind} {name!r} (installed: {known})")
    return specs[name]


def create(kind: Kind, name: str, **options: Any) -> Any:
    """Build the stage object ``name`` of ``kind`` with keyword options."""
    return resolve(kind, name).factory(**options)
