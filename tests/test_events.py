"""The core mirrors the event-format constants (it does not import the I/O side)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

import pytest

import dmsim.core
from dmsim.trace import events

# the names of the event format: every constant events.py defines in these families
MIRRORED_PREFIXES = ("EV_", "CPAF_", "VFREE_", "UNMAPPED_")


def _literal_constants(module) -> dict[str, int]:
    """Module-level `NAME = <int literal>` assignments in a module's own source."""
    out = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and type(node.value.value) is int):
            out[node.targets[0].id] = node.value.value
    return out


def _core_modules():
    return [importlib.import_module(f"dmsim.core.{m.name}")
            for m in pkgutil.iter_modules(dmsim.core.__path__)]


def mirror_problems(module) -> list[str]:
    """Constants the module defines by hand that are events.py's names with another
    value, or in events.py's families without being in events.py."""
    problems = []
    for name, value in _literal_constants(module).items():
        if hasattr(events, name):
            if getattr(events, name) != value:
                problems.append(f"{module.__name__}.{name} = {value}, events.{name} = "
                                f"{getattr(events, name)}")
        elif name.startswith(MIRRORED_PREFIXES):
            problems.append(f"{module.__name__}.{name}: not in dmsim/trace/events.py")
    return problems


def test_every_mirrored_constant_agrees():
    checked = {}
    for module in _core_modules():
        assert not mirror_problems(module)
        checked[module.__name__] = {n for n in _literal_constants(module) if hasattr(events, n)}
    # the modules known to mirror the format are found and checked (the test sees them)
    assert {"EV_CPA", "EV_CHECKPOINT", "CPAF_PRIMARY", "CPAF_COLLAPSE"} <= checked["dmsim.core.replay"]
    assert {"CPAF_PRIMARY", "CPAF_FORCE_SPLIT", "CPAF_COLLAPSE"} <= checked["dmsim.core.cpa"]
    assert {"EV_H_CLAIM", "EV_H_CPA", "CPAF_RAW", "VFREE_RESET_PERMS",
            "UNMAPPED_SHIFT"} <= checked["dmsim.core.placement"]


@pytest.mark.parametrize("source, problem", [
    ("EV_CPA = 2\n", "dmsim.core.fake.EV_CPA = 2, events.EV_CPA = 1"),
    ("EV_H_NEW = 99\n", "dmsim.core.fake.EV_H_NEW: not in dmsim/trace/events.py"),
])
def test_a_wrong_or_unknown_mirror_is_found(monkeypatch, source, problem):
    import types

    fake = types.ModuleType("dmsim.core.fake")
    monkeypatch.setattr(inspect, "getsource", lambda m: source)
    assert mirror_problems(fake) == [problem]


def test_event_builder_grows_and_keeps_order():
    b = events.EventBuilder(capacity=2)
    for i in range(5):
        b.append(events.EV_CPA, i, i + 1, 2, 0, events.CPAF_PRIMARY)
    ev = b.finish()
    assert len(ev) == 5 and list(ev.arg0) == [0, 1, 2, 3, 4] and list(ev.arg1) == [1, 2, 3, 4, 5]
    assert [c.dtype for c in ev.columns()] == [dt for _, dt in events.COLUMNS]
