"""Policies: what the simulated kernel does differently from Linux 6.1.

A Policy is one allocation policy and one merge policy with their parameters
(docs/design-policies.md). The core takes it as plain numbers (`alloc_code`,
`merge_code`, `unmapped_mask`); loading and composing YAML files lives here
(file format: docs/policies.md).

A spec names one policy file or composes several with `+`:
`migrate_unmapped+cpa_merge`. A name is `dmsim/configs/policies/NAME.yaml`; a path
(containing `/` or ending in `.yaml`/`.yml`) is read as it is. Every problem
raises PolicyError naming the file (or the spec) and the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .trace.events import UNMAPPED_GROUPS
from .yamlfile import load_yaml

ALLOC_POLICIES = ("baseline", "migrate_unmapped", "unmapped_alloc")
MERGE_POLICIES = ("none", "cpa_merge", "rox_collapse")

POLICY_DIR = Path(__file__).resolve().parent / "configs" / "policies"
"""Where policy names are looked up (dmsim/configs/policies/, package data)."""

FILE_KEYS = ("description", "source", "alloc", "merge", "collapse_free_pageblock",
             "unmapped_users")
PARAM_KEYS = ("collapse_free_pageblock", "unmapped_users")  # parameters of the allocation policy
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class PolicyError(ValueError):
    """A policy spec or file is wrong; the message names the file and the key."""


class PolicyFileError(PolicyError):
    """A policy file that cannot be read or is malformed (bad input, where a wrong
    spec, e.g. an unknown name or two allocation policies composed, is a usage error)."""


@dataclass(frozen=True)
class Policy:
    name: str = "baseline"
    alloc: str = "baseline"  # one of ALLOC_POLICIES
    merge: str = "none"  # one of MERGE_POLICIES
    # migrate_unmapped: the prototype's disabled FIXME in __free_one_page()
    collapse_free_pageblock: bool = False
    # groups whose allocations ask for __GFP_UNMAPPED (events.UNMAPPED_GROUPS)
    unmapped_users: tuple[str, ...] = ("secretmem", "module", "bpf")
    description: str = ""
    source: str = ""
    params: dict = field(default_factory=dict, compare=False, hash=False)
    # the files it was loaded from, in spec order
    files: tuple[str, ...] = field(default=(), compare=False)

    @property
    def alloc_code(self) -> int:
        return ALLOC_POLICIES.index(self.alloc)

    @property
    def merge_code(self) -> int:
        return MERGE_POLICIES.index(self.merge)

    @property
    def unmapped_mask(self) -> int:
        """Bit (1 << group) for each group that asks for __GFP_UNMAPPED; 0 under baseline."""
        if self.alloc == "baseline":
            return 0
        mask = 0
        for g in self.unmapped_users:
            mask |= 1 << UNMAPPED_GROUPS[g]
        return mask

    @property
    def alias_no_nx(self) -> bool:
        """Which kernel's cpa_process_alias() a replay follows: 6.1 copies the masks
        whole; 6.2 and later (commit 127960a05548) leave _PAGE_NX out of the alias
        call. A policy modelled on a later kernel (rox_collapse: 6.15) takes the later
        rule; everything else is 6.1's."""
        return self.merge == "rox_collapse"

    @property
    def is_baseline(self) -> bool:
        """Linux 6.1 as it is: baseline allocation, nothing merges."""
        return self.alloc == "baseline" and self.merge == "none"

    @property
    def needs_simulated_placement(self) -> bool:
        """An allocation policy decides where pages go: recorded placement cannot show it."""
        return self.alloc != "baseline"

    def to_json(self) -> dict:
        return {"name": self.name, "alloc": self.alloc, "merge": self.merge,
                "collapse_free_pageblock": self.collapse_free_pageblock,
                "unmapped_users": list(self.unmapped_users) if self.alloc != "baseline" else [],
                "description": self.description, "source": self.source,
                "files": list(self.files),
                "cpa_alias_masks": "6.2+: without _PAGE_NX" if self.alias_no_nx
                else "6.1: copied whole"}


BASELINE = Policy()


@dataclass(frozen=True)
class PolicyFile:
    """One YAML file as written: only the keys it sets."""

    name: str
    path: str
    description: str
    source: str
    alloc: str | None
    merge: str | None
    params: dict


def _shown(path: Path | str) -> str:
    """A path as messages show it: relative to the working directory when below it."""
    p = str(path)
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return p
    return p if rel.startswith("..") else rel


def parse_policy_file(data, where: str, name: str) -> PolicyFile:
    """Validate a parsed YAML document; `where` (the file) prefixes every error
    (PolicyFileError)."""
    try:
        return _parse_policy_file(data, where, name)
    except PolicyFileError:
        raise
    except PolicyError as e:
        raise PolicyFileError(str(e)) from None


def _parse_policy_file(data, where: str, name: str) -> PolicyFile:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a mapping of keys ({', '.join(FILE_KEYS)})")
    for k in data:
        if k not in FILE_KEYS:
            raise PolicyError(f"{where}: {k}: unknown key (known: {', '.join(FILE_KEYS)})")
    text = {}
    for k in ("description", "source"):
        v = data.get(k, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise PolicyError(f"{where}: {k}: expected a string: {v!r}")
        v = v.strip()
        if "\n" in v:
            raise PolicyError(f"{where}: {k}: expected one line")
        text[k] = v
    alloc = data.get("alloc")
    if alloc is not None and alloc not in ALLOC_POLICIES:
        raise PolicyError(f"{where}: alloc: unknown allocation policy {alloc!r} "
                          f"(known: {', '.join(ALLOC_POLICIES)})")
    merge = data.get("merge")
    if merge is not None and merge not in MERGE_POLICIES:
        raise PolicyError(f"{where}: merge: unknown merge policy {merge!r} "
                          f"(known: {', '.join(MERGE_POLICIES)})")
    params = {}
    if "collapse_free_pageblock" in data:
        v = data["collapse_free_pageblock"]
        if not isinstance(v, bool):
            raise PolicyError(f"{where}: collapse_free_pageblock: expected true or false: {v!r}")
        params["collapse_free_pageblock"] = v
    if "unmapped_users" in data:
        params["unmapped_users"] = _unmapped_users(data["unmapped_users"],
                                                   f"{where}: unmapped_users")
    if alloc is None and merge is None and not params:
        raise PolicyError(f"{where}: sets nothing (give alloc, merge or a parameter: "
                          f"{', '.join(PARAM_KEYS)})")
    if alloc is not None:  # a file that names its allocation policy: check its parameters now
        _check_params(alloc, params, where)
    return PolicyFile(name, where, text["description"], text["source"], alloc, merge, params)


def _unmapped_users(v, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(g, str) for g in v):
        raise PolicyError(f"{where}: expected a list of groups "
                          f"({', '.join(UNMAPPED_GROUPS)}): {v!r}")
    for g in v:
        if g not in UNMAPPED_GROUPS:
            raise PolicyError(f"{where}: unknown group {g!r} (known: {', '.join(UNMAPPED_GROUPS)})")
    dup = next((g for i, g in enumerate(v) if g in v[:i]), None)
    if dup is not None:
        raise PolicyError(f"{where}: {dup!r} given twice")
    return tuple(v)


def _check_params(alloc: str, params: dict, where: str) -> None:
    if "unmapped_users" in params and alloc == "baseline":
        raise PolicyError(f"{where}: unmapped_users: only an allocation policy uses it "
                          "(alloc: migrate_unmapped or unmapped_alloc), not baseline")
    if params.get("collapse_free_pageblock") and alloc != "migrate_unmapped":
        raise PolicyError(f"{where}: collapse_free_pageblock: only alloc: migrate_unmapped "
                          f"has it, not {alloc}")


def read_policy_file(path: Path | str, name: str | None = None) -> PolicyFile:
    """Read one policy YAML file."""
    where = _shown(path)
    if name is None:
        name = Path(path).name
        for ext in (".yaml", ".yml"):
            if name.endswith(ext):
                name = name[:-len(ext)]
    data = load_yaml(path, where, PolicyFileError)
    return parse_policy_file(data, where, name)


def policy_names(directory: Path | str = POLICY_DIR) -> list[str]:
    """The names of the policy files in `directory`, sorted."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    return sorted(e[:-5] for e in entries if e.endswith(".yaml") and not e.startswith("."))


def _resolve(part: str, directory: Path | str) -> PolicyFile:
    if "/" in part or part.endswith((".yaml", ".yml")) or os.sep in part:
        if not os.path.isfile(part):
            raise PolicyFileError(f"{part}: no such policy file")
        return read_policy_file(part)
    if not NAME_RE.fullmatch(part):
        raise PolicyError(f"{part!r}: not a policy name (a name in {_shown(directory)}/ "
                          "or a path to a YAML file)")
    path = Path(directory) / f"{part}.yaml"
    if not path.is_file():
        known = ", ".join(policy_names(directory)) or "none"
        raise PolicyError(f"{part}: unknown policy (known: {known}; "
                          "or give a path to a YAML file)")
    return read_policy_file(path, part)


def compose(files: list[PolicyFile], name: str | None = None) -> Policy:
    """One Policy from files that each set an allocation and/or a merge policy and
    parameters. Two files may not both set a non-default allocation policy (or
    merge policy). A file that sets only parameters overrides the parameters of
    the files that set a policy; two files of the same kind may not give one
    parameter two values."""
    if not files:
        raise PolicyError("empty policy spec")
    name = name or "+".join(f.name for f in files)
    alloc, alloc_from = "baseline", None
    merge, merge_from = "none", None
    # parameters: those of the files that set a policy are its defaults; a file that
    # sets parameters only refines them. Within each kind, two values are an error.
    params: dict = {}
    refined: dict = {}
    set_by: dict = {id(params): {}, id(refined): {}}  # tier -> key -> the file that set it
    for f in files:
        if f.alloc not in (None, "baseline"):
            if alloc_from is not None:
                raise PolicyError(f"{name}: alloc: {alloc_from.path} sets {alloc} and "
                                  f"{f.path} sets {f.alloc}: one allocation policy at a time")
            alloc, alloc_from = f.alloc, f
        if f.merge not in (None, "none"):
            if merge_from is not None:
                raise PolicyError(f"{name}: merge: {merge_from.path} sets {merge} and "
                                  f"{f.path} sets {f.merge}: one merge policy at a time")
            merge, merge_from = f.merge, f
        into = params if f.alloc is not None or f.merge is not None else refined
        by = set_by[id(into)]
        for k, v in f.params.items():
            if k in into and into[k] != v:
                raise PolicyError(f"{name}: {k}: {by[k].path} and {f.path} set it differently")
            into[k] = v
            by.setdefault(k, f)
    params.update(refined)
    _check_params(alloc, params, name)
    setters = [f for f in files
               if f.alloc not in (None, "baseline") or f.merge not in (None, "none")] or files
    return Policy(
        name=name, alloc=alloc, merge=merge,
        collapse_free_pageblock=params.get("collapse_free_pageblock", False),
        unmapped_users=params.get("unmapped_users", BASELINE.unmapped_users),
        description=" + ".join(f.description for f in setters if f.description),
        source="; ".join(f.source for f in setters if f.source),
        params=dict(params),
        files=tuple(f.path for f in files))


def load_policy(spec: str, directory: Path | str = POLICY_DIR) -> Policy:
    """A Policy from `name`, `name+name+...` or a path to a YAML file.

    The name of a composed policy is the spec as given (a path counts as its
    file name without .yaml)."""
    spec = spec.strip()
    if not spec:
        raise PolicyError("empty policy spec")
    if os.path.isfile(spec):  # a path that happens to contain `+`
        return compose([read_policy_file(spec)])
    parts = [p.strip() for p in spec.split("+")]
    if any(not p for p in parts):
        raise PolicyError(f"{spec}: empty name between `+` signs")
    return compose([_resolve(p, directory) for p in parts])


def list_policies(directory: Path | str = POLICY_DIR) -> list[Policy]:
    """Every policy file in `directory`, by name. A file that sets parameters only
    (e.g. module_alloc_users) is listed with its parameters; it is used composed
    (`--policy migrate_unmapped+module_alloc_users`): `is_parameters` tells them apart."""
    out = []
    for n in policy_names(directory):
        f = read_policy_file(Path(directory) / f"{n}.yaml", n)
        if f.alloc is None and f.merge is None:
            out.append(Policy(name=n, unmapped_users=f.params.get(
                "unmapped_users", BASELINE.unmapped_users),
                collapse_free_pageblock=f.params.get("collapse_free_pageblock", False),
                description=f.description, source=f.source, params=dict(f.params),
                files=(f.path,)))
        else:
            out.append(compose([f]))
    return out


def is_parameters(directory: Path | str, name: str) -> bool:
    """A file that sets neither an allocation nor a merge policy."""
    f = read_policy_file(Path(directory) / f"{name}.yaml", name)
    return f.alloc is None and f.merge is None
