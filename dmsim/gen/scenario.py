"""Load a scenario YAML and check every key (dmsim/configs/scenarios/README.md).

A scenario may `include:` other files (a name or a list, relative to it); their
mappings are merged key by key under the scenario's own (mappings recursively,
anything else replaced). Every problem raises ScenarioError naming the file the
offending key came from and the key's path, e.g.
`dmsim/configs/scenarios/modules.yaml: modules.cycles: expected a number, got 'many'`,
so a typo cannot silently change a workload.
"""

from __future__ import annotations

import os

from ..yamlfile import load_yaml

SCENARIO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs", "scenarios")  # dmsim/configs/scenarios/, package data


class ScenarioError(ValueError):
    """A scenario file that cannot describe a workload: names the file and the key."""


class UnknownScenario(ScenarioError):
    """A scenario name that names no file in dmsim/configs/scenarios/ (a usage error)."""


class ScaleError(ScenarioError):
    """A --scale the scenario cannot be generated at (a usage error)."""


def resolve(name: str) -> str:
    """A scenario name (`boot`) is dmsim/configs/scenarios/<name>.yaml; anything else is a path."""
    if os.sep not in name and not name.endswith((".yaml", ".yml")):
        path = os.path.join(SCENARIO_DIR, name + ".yaml")
        if not os.path.exists(path):
            known = sorted(f[:-5] for f in os.listdir(SCENARIO_DIR)
                           if f.endswith(".yaml") and not f.startswith("_"))
            raise UnknownScenario(f"{name}: no such scenario (known: {', '.join(known)}; "
                                "or give a path to a YAML file)")
        return path
    return name


def _read(path: str):
    return load_yaml(path, path, ScenarioError)


def _merge(base: dict, top: dict, origin: dict, path: tuple, src: str) -> dict:
    out = dict(base)
    for k, v in top.items():
        p = path + (k,)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origin, p, src)
        else:
            out[k] = v
            for q in [q for q in origin if q[:len(p)] == p]:
                del origin[q]
            _mark(v, p, origin, src)
        origin[p] = src
    return out


def _mark(v, path: tuple, origin: dict, src: str) -> None:
    """Every key path inside mapping `v` came from `src` (a later merge of the parent
    mapping must not make them look like the merging file's: file names given in a
    nested key, e.g. boot.kernel_calls, are relative to the file that gave them)."""
    if isinstance(v, dict):
        for k, x in v.items():
            origin[path + (k,)] = src
            _mark(x, path + (k,), origin, src)


def load_raw(path: str, _seen: tuple = ()) -> tuple[dict, dict]:
    """The merged mapping and, per key path, the file it came from."""
    if os.path.abspath(path) in _seen:
        raise ScenarioError(f"{path}: include: includes itself")
    data = _read(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a mapping of keys (machine, duration, ...)")
    merged: dict = {}
    origin: dict = {}
    inc = data.get("include", [])
    if isinstance(inc, str):
        inc = [inc]
    if not isinstance(inc, list) or not all(isinstance(i, str) for i in inc):
        raise ScenarioError(f"{path}: include: expected a file name or a list of them")
    for name in inc:
        sub = os.path.join(os.path.dirname(path), name)
        if not os.path.exists(sub):
            raise ScenarioError(f"{path}: include: {name}: no such file")
        d, o = load_raw(sub, _seen + (os.path.abspath(path),))
        merged = _merge(merged, d, origin, (), sub)
        origin.update(o)
    own = {k: v for k, v in data.items() if k != "include"}
    merged = _merge(merged, own, origin, (), path)
    return merged, origin


class Section:
    """One mapping of the scenario, read key by key; `done()` rejects unknown keys."""

    def __init__(self, data, path: tuple, scenario: Scenario):
        self.path = path
        self.sc = scenario
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail("expected a mapping")
        self.data = data
        self.used: set = set()

    def where(self, key=None) -> str:
        parts = []
        for p in self.path + ((key,) if key is not None else ()):
            if isinstance(p, int):
                parts[-1] += f"[{p}]"
            else:
                parts.append(str(p))
        return ".".join(parts)

    def fail(self, msg: str, key=None):
        full = self.path + ((key,) if key is not None else ())
        raise ScenarioError(f"{self.sc.file_of(full)}: {self.where(key)}: {msg}")

    def has(self, key) -> bool:
        """Given and not null (`key: null` removes what an include set)."""
        return self.data.get(key) is not None

    def get(self, key, default=None):
        self.used.add(key)
        v = self.data.get(key)
        return default if v is None else v

    def num(self, key, default=None, lo=None, hi=None, integer=False):
        v = self.get(key, default)
        if v is None:
            self.fail("missing", key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(f"expected a number, got {v!r}", key)
        if integer and v != int(v):
            self.fail(f"expected a whole number, got {v!r}", key)
        if lo is not None and v < lo:
            self.fail(f"{v!r} is below {lo}", key)
        if hi is not None and v > hi:
            self.fail(f"{v!r} is above {hi}", key)
        return int(v) if integer else float(v)

    def int(self, key, default=None, lo=None, hi=None) -> int:
        return self.num(key, default, lo, hi, integer=True)

    def bool(self, key, default=None) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            self.fail(f"expected true or false, got {v!r}", key)
        return v

    def str(self, key, default=None) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            self.fail(f"expected a string, got {v!r}", key)
        return v

    def list(self, key, default=None) -> list:
        v = self.get(key, default)
        if not isinstance(v, list):
            self.fail(f"expected a list, got {v!r}", key)
        return v

    def sub(self, key) -> Section:
        self.used.add(key)
        return Section(self.data.get(key), self.path + (key,), self.sc)

    def items(self, key) -> list[Section]:
        """A list of mappings."""
        return [Section(v, self.path + (key, i), self.sc) for i, v in enumerate(self.list(key, []))]

    def dist(self, key, default=None):
        from .dist import parse_dist

        v = self.get(key, default)
        if v is None:
            self.fail("missing", key)
        try:
            return parse_dist(v)
        except ValueError as e:
            self.fail(str(e), key)

    def done(self) -> None:
        extra = [k for k in self.data if k not in self.used]
        if extra:
            known = ", ".join(str(k) for k in sorted(self.used, key=str))
            self.fail(f"unknown key (known: {known})", extra[0])


class Scenario:
    """A loaded scenario: the merged mapping and where each key came from."""

    def __init__(self, path: str):
        self.path = path
        self.data, self.origin = load_raw(path)
        self.name = os.path.splitext(os.path.basename(path))[0]

    def file_of(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.origin:
                return self.origin[path[:n]]
        return self.path

    def root(self) -> Section:
        return Section(self.data, (), self)


def load_scenario(name: str) -> Scenario:
    return Scenario(resolve(name))
