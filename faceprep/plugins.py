"""Plugin manager: built-in stages first, then everything in the ``faceprep`` entry-point group.

Callers use the small typed facade here (``stages``, ``create``, ``accepts_option``) and never touch
pluggy directly. Set ``FACEPREP_DISABLE_ENTRYPOINTS=1`` to load only the built-ins (useful in tests).

A broken third-party plugin never takes the others down: an entry point that raises while loading,
a module with no ``@hookimpl``-decorated hook, or a registrar hook that raises or returns something
other than ``StageSpec`` records is skipped with one ``PluginLoadWarning`` line naming it, and is
listed by ``load_failures()`` (``faceprep plugins`` prints them).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to load or registers nothing; the message is one line."""


@dataclass(frozen=True)
class PluginLoadFailure:
    """A plugin that was skipped: its name, where it came from, and why (one line)."""

    name: str
    origin: str  # "entry point faceprep_yunet.plugin", "module faceprep.builtin.x", "registered as 'x'"
    reason: str

    @property
    def message(self) -> str:
        return f"faceprep: plugin {self.name!r} ({self.origin}) failed to load: {self.reason}; skipped"


_MARK = f"{hookspecs.PROJECT}_impl"  # the attribute @hookimpl sets on a function
_FAILURES: list[PluginLoadFailure] = []
_ORIGINS: dict[str, str] = {}  # plugin name -> where it came from, for the messages


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _exc_reason(exc: BaseException) -> str:
    return _one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _fail(name: str, origin: str, reason: str) -> None:
    failure = PluginLoadFailure(name, origin, reason)
    if failure not in _FAILURES:  # registrar hooks run on every ``stages()``: warn once
        _FAILURES.append(failure)
        warnings.warn(failure.message, PluginLoadWarning, stacklevel=3)


def _has_hooks(pm: pluggy.PluginManager, plugin: object) -> bool:
    """Whether ``plugin`` implements at least one faceprep hook (misspelt hook names do not count)."""
    return any(caller.name in _HOOKS.values() for caller in pm.get_hookcallers(plugin) or ())


def _no_hook_reason(plugin: object) -> str:
    """Why ``plugin`` registers no stage: undecorated hook functions, misspelt names, or nothing."""
    hooks = sorted(_HOOKS.values())
    undecorated = [
        h for h in hooks if callable(getattr(plugin, h, None)) and not hasattr(getattr(plugin, h), _MARK)
    ]
    if undecorated:
        return f"{', '.join(undecorated)} not decorated with @faceprep.hookimpl, so it registers no stage"
    misspelt = [n for n in dir(plugin) if n.startswith("faceprep_") and n not in hooks]
    if misspelt:
        return f"{', '.join(misspelt)} is not a faceprep hook (the hooks: {', '.join(hooks)})"
    return f"it defines no @faceprep.hookimpl hook ({', '.join(hooks)})"


def _register_checked(
    pm: pluggy.PluginManager, plugin: object, name: str, origin: str, *, strict: bool = False
) -> bool:
    """Register ``plugin``; False (and a warning) if it brings no hook or, unless ``strict``, if
    pluggy refuses it (bad hook signature, name already taken); ``strict`` lets that error raise."""
    _ORIGINS[name] = origin
    try:
        pm.register(plugin, name=name)
    except Exception as exc:
        if strict:
            raise
        _fail(name, origin, _exc_reason(exc))
        return False
    if not _has_hooks(pm, plugin):
        pm.unregister(plugin)
        _fail(name, origin, _no_hook_reason(plugin))
        return False
    return True


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        origin = f"entry point {ep.value}"
        try:
            plugin = ep.load()
        except Exception as exc:  # ImportError, a syntax error, anything at import: skip this one only
            _fail(ep.name, origin, _exc_reason(exc))
            continue
        _register_checked(pm, plugin, ep.name, origin)


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    _FAILURES.clear()
    _ORIGINS.clear()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:  # built-ins must load: an error here is a bug, not a skipped plugin
        _ORIGINS[name] = f"module {name}"
        pm.register(importlib.import_module(name), name=name)
    if not os.environ.get("FACEPREP_DISABLE_ENTRYPOINTS"):
        _load_entry_points(pm)
    return pm


def register(plugin: object, name: str) -> bool:
    """Register a plugin object at run time (a module or namespace with ``@hookimpl`` hooks).

    Returns False, with a ``PluginLoadWarning``, when it is skipped because it has no decorated hook;
    pluggy's errors (a hook with wrong arguments, a name already registered) raise.
    """
    return _register_checked(get_plugin_manager(), plugin, name, f"registered as {name!r}", strict=True)


def unregister(name: str) -> None:
    """Remove the plugin registered under ``name`` (no-op if there is none)."""
    get_plugin_manager().unregister(name=name)


def load_failures() -> tuple[PluginLoadFailure, ...]:
    """The plugins skipped so far (load errors, no hooks, failing hooks), in the order they failed."""
    get_plugin_manager()
    return tuple(_FAILURES)


def stages(kind: Kind) -> dict[str, StageSpec]:
    """All stages of one kind, by name. Raises ValueError if two plugins claim one name.

    Each plugin's registrar is called on its own: one that raises or returns something other than
    ``StageSpec`` records is skipped (``PluginLoadWarning``) and the others still count.
    """
    pm = get_plugin_manager()
    hook = getattr(pm.hook, _HOOKS[kind])
    found: dict[str, StageSpec] = {}
    for impl in reversed(hook.get_hookimpls()):  # pluggy's own call order: last registered first
        if impl.hookwrapper or impl.wrapper:
            continue
        name = impl.plugin_name
        try:
            specs = list(impl.function())
        except Exception as exc:
            _fail(
                name,
                _ORIGINS.get(name, f"registered as {name!r}"),
                f"{_HOOKS[kind]}() raised {_exc_reason(exc)}",
            )
            continue
        bad = [s for s in specs if not isinstance(s, StageSpec)]
        if bad:
            got = type(bad[0]).__name__
            _fail(
                name,
                _ORIGINS.get(name, f"registered as {name!r}"),
                f"{_HOOKS[kind]}() returned a {got}, not a StageSpec",
            )
            continue
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


def factory_options(factory: Callable[..., Any]) -> tuple[frozenset[str], bool] | None:
    """The keyword options ``factory`` declares and whether it takes ``**kwargs``; None if unreadable."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some C callables have no readable signature
        return None
    named = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def accepts_option(kind: Kind, name: str, option: str) -> bool:
    """Whether stage ``name`` of ``kind``'s factory takes keyword ``option`` (by name or ``**kwargs``).

    False when its signature cannot be read. The CLI uses it to pass optional options such as
    ``num_threads`` only to factories that declare them.
    """
    declared = factory_options(resolve(kind, name).factory)
    return declared is not None and (option in declared[0] or declared[1])
