"""Suites register themselves here by name; modules under `suites/` are imported on demand."""

from __future__ import annotations

import importlib
import pkgutil

from evalkit.errors import EvalkitError
from evalkit.suite import Suite

_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    if suite.name in _SUITES:
        raise ValueError(f"suite {suite.name!r} registered twice")
    _SUITES[suite.name] = suite
    return suite


def _import_all() -> None:
    import suites

    for info in pkgutil.iter_modules(suites.__path__):
        importlib.import_module(f"suites.{info.name}")


def all_suites() -> dict[str, Suite]:
    _import_all()
    return dict(sorted(_SUITES.items()))


def get_suite(name: str) -> Suite:
    suites = all_suites()
    if name not in suites:
        raise EvalkitError(f"unknown suite {name!r}: choose from {', '.join(suites)}")
    return suites[name]
