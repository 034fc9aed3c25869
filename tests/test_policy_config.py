"""Policy files: the shipped ones, specs, composition and errors that name file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dmsim.policy import (
    ALLOC_POLICIES,
    BASELINE,
    MERGE_POLICIES,
    POLICY_DIR,
    PolicyError,
    list_policies,
    load_policy,
)

SHIPPED = {
    "baseline": ("baseline", "none", False),
    "migrate_unmapped": ("migrate_unmapped", "none", False),
    "migrate_unmapped_collapse": ("migrate_unmapped", "none", True),
    "unmapped_alloc": ("unmapped_alloc", "none", False),
    "cpa_merge": ("baseline", "cpa_merge", False),
    "rox_collapse": ("baseline", "rox_collapse", False),
}


def test_shipped_policies():
    found = {p.name: p for p in list_policies()}
    assert set(SHIPPED) <= set(found)
    for name, (alloc, merge, collapse) in SHIPPED.items():
        p = found[name]
        assert (p.alloc, p.merge, p.collapse_free_pageblock) == (alloc, merge, collapse)
        assert p.description and "\n" not in p.description
        assert p.source and "\n" not in p.source
        assert load_policy(name) == p
    for p in found.values():
        assert p.alloc in ALLOC_POLICIES and p.merge in MERGE_POLICIES
        if p.alloc != "baseline":
            assert p.unmapped_users == ("secretmem", "module", "bpf")
    assert found["baseline"].is_baseline and found["baseline"].unmapped_mask == 0
    assert found["migrate_unmapped"].needs_simulated_placement
    assert not found["cpa_merge"].needs_simulated_placement
    assert found["migrate_unmapped"].unmapped_mask == (1 << 1) | (1 << 2) | (1 << 3)


DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design-policies.md"


def _source_ids(source: str) -> list[str]:
    """What identifies a patch in a source line: its quoted title, dates, commit ids and
    the author (the text before the first comma, without a leading "Linux ")."""
    ids = re.findall(r'"[^"]+"', source)
    ids += re.findall(r"\b(?:\d{1,2} )?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4}\b",
                      source)
    ids += re.findall(r"\b[0-9a-f]{12}\b", source)
    author = source.split(",")[0].split(" (")[0].removeprefix("Linux ").strip()
    return ids + [author]


def _sections(doc: str) -> dict[str, str]:
    """'### name — heading' sections of docs/design-policies.md: name -> heading and body."""
    parts = re.split(r"^### ", doc, flags=re.M)[1:]
    return {part.split()[0]: part.split("\n## ")[0] for part in parts}


def test_sources_name_what_design_policies_names():
    sections = _sections(DESIGN.read_text())
    # every allocation and merge policy has its section
    assert set(ALLOC_POLICIES) | set(MERGE_POLICIES) <= set(sections)
    found = {p.name: p for p in list_policies()}
    for p in found.values():
        ids = _source_ids(p.source)
        mechanism = p.merge if p.merge != "none" else p.alloc
        if mechanism != "baseline":
            # the patch the file names is the one its mechanism's section describes
            heading = sections[mechanism].split("\n")[0]
            missing = [i for i in ids if i not in heading]
            assert not missing, f"{p.name}: {missing} not in '### {heading}'"
        else:
            # a parameter file (or baseline itself): some section names its source
            assert any(all(i in text for i in ids) for text in sections.values()), (p.name, ids)
    assert "27 Jan 2022" in found["migrate_unmapped"].source
    assert "8 Mar 2023" in found["unmapped_alloc"].source
    assert "Aaron Lu" in found["cpa_merge"].source
    assert "41d88484c71c" in found["rox_collapse"].source
    assert _source_ids(found["migrate_unmapped"].source) == [
        '"[RFC PATCH 1/3] mm/page_alloc: introduce __GFP_UNMAPPED and MIGRATE_UNMAPPED"',
        "27 Jan 2022", "Rapoport"]


def test_composition():
    p = load_policy("migrate_unmapped+cpa_merge")
    assert (p.name, p.alloc, p.merge) == ("migrate_unmapped+cpa_merge", "migrate_unmapped",
                                          "cpa_merge")
    assert p.unmapped_users == ("secretmem", "module", "bpf")
    assert "Rapoport" in p.source and "Aaron Lu" in p.source
    assert len(p.files) == 2
    p = load_policy(" baseline + rox_collapse ")
    assert (p.name, p.alloc, p.merge) == ("baseline+rox_collapse", "baseline", "rox_collapse")
    p = load_policy("migrate_unmapped_collapse+cpa_merge")
    assert p.collapse_free_pageblock and p.merge == "cpa_merge"


@pytest.mark.parametrize("spec, message", [
    ("cpa_merge+rox_collapse", "merge: dmsim/configs/policies/cpa_merge.yaml sets cpa_merge and "
                               "dmsim/configs/policies/rox_collapse.yaml sets rox_collapse"),
    ("migrate_unmapped+unmapped_alloc", "one allocation policy at a time"),
    ("cpa_merge+cpa_merge", "one merge policy at a time"),
    ("nosuch", "nosuch: unknown policy (known: baseline, "),
    ("a++b", "empty name"),
    ("", "empty policy spec"),
    ("../x", "no such policy file"),
    ("bad name", "not a policy name"),
])
def test_bad_specs(spec, message):
    with pytest.raises(PolicyError, match=None) as e:
        load_policy(spec)
    assert message in str(e.value)


def _write(tmp_path, name, text):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("alloc: migrate\n", "alloc: unknown allocation policy 'migrate'"),
    ("merge: cpa\n", "merge: unknown merge policy 'cpa' (known: none, cpa_merge, rox_collapse)"),
    ("alloc: baseline\nmerges: none\n", "merges: unknown key"),
    ("description: [a]\nmerge: none\n", "description: expected a string"),
    ("description: \"a\\nb\"\nmerge: none\n", "description: expected one line"),
    ("alloc: migrate_unmapped\ncollapse_free_pageblock: yes please\n",
     "collapse_free_pageblock: expected true or false"),
    ("alloc: unmapped_alloc\ncollapse_free_pageblock: true\n",
     "collapse_free_pageblock: only alloc: migrate_unmapped"),
    ("alloc: migrate_unmapped\nunmapped_users: [secretmem, kvm]\n",
     "unmapped_users: unknown group 'kvm'"),
    ("alloc: migrate_unmapped\nunmapped_users: secretmem\n",
     "unmapped_users: expected a list of groups"),
    ("alloc: migrate_unmapped\nunmapped_users: [bpf, bpf]\n", "unmapped_users: 'bpf' given twice"),
    ("alloc: baseline\nunmapped_users: [bpf]\n", "unmapped_users: only an allocation policy"),
    ("description: nothing\n", "sets nothing"),
    ("- alloc: baseline\n", "expected a mapping"),
    ("alloc: [baseline\n", "not valid YAML"),
])
def test_bad_files_name_file_and_key(tmp_path, text, message):
    p = _write(tmp_path, "x", text)
    with pytest.raises(PolicyError) as e:
        load_policy(str(p))
    assert str(e.value).startswith(str(p) + ":") or str(e.value).startswith("x")
    assert str(p) in str(e.value) and message in str(e.value)


def test_path_specs_and_parameter_files(tmp_path):
    p = _write(tmp_path, "secretmem_only", "unmapped_users: [secretmem]\n")
    pol = load_policy(f"migrate_unmapped+{p}")
    assert pol.name == "migrate_unmapped+secretmem_only"
    assert pol.alloc == "migrate_unmapped" and pol.unmapped_users == ("secretmem",)
    assert pol.unmapped_mask == 1 << 1
    # a parameter file alone leaves the allocation baseline: its parameter has no user
    with pytest.raises(PolicyError, match="secretmem_only: unmapped_users: only an allocation"):
        load_policy(str(p))
    # a parameter-only file refines the policy file, in either order
    assert load_policy(f"{p}+migrate_unmapped").unmapped_users == ("secretmem",)
    q = _write(tmp_path, "bpf_only", "unmapped_users: [bpf]\n")
    with pytest.raises(PolicyError, match="unmapped_users: .*secretmem_only.yaml and .*"
                                          "bpf_only.yaml set it differently"):
        load_policy(f"migrate_unmapped+{p}+{q}")
    with pytest.raises(PolicyError, match="unmapped_users: .*secretmem_only.yaml and .*"
                                          "bpf_only.yaml set it differently"):
        load_policy(f"{p}+migrate_unmapped+{q}")
    r = _write(tmp_path, "mu_secretmem", "alloc: migrate_unmapped\nunmapped_users: [secretmem]\n")
    assert load_policy(f"{r}+cpa_merge").unmapped_users == ("secretmem",)
    nc = _write(tmp_path, "no_collapse", "collapse_free_pageblock: false\n")
    assert not load_policy(f"migrate_unmapped_collapse+{nc}").collapse_free_pageblock


def test_list_policies_in_a_directory(tmp_path):
    _write(tmp_path, "b", "merge: cpa_merge\ndescription: B\n")
    _write(tmp_path, "a", "alloc: unmapped_alloc\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    assert [p.name for p in list_policies(tmp_path)] == ["a", "b"]
    assert load_policy("a+b", tmp_path).merge == "cpa_merge"
    _write(tmp_path, "c", "merge: nope\n")
    with pytest.raises(PolicyError, match="c.yaml: merge: unknown merge policy"):
        list_policies(tmp_path)


def test_shipped_directory_and_baseline_default():
    assert (POLICY_DIR / "baseline.yaml").is_file()
    assert BASELINE.is_baseline and BASELINE.to_json()["unmapped_users"] == []


def test_bench_covers_every_policy_file():
    """README: `make bench` measures placement under each policy in dmsim/configs/policies/."""
    import inspect

    from bench import run
    from dmsim.policy import policy_names

    specs = run.bench_policies()
    assert {name for spec in specs for name in spec.split("+")} >= set(policy_names())
    assert len(policy_names()) == 7 and all(load_policy(s) for s in specs)
    assert "for policy in bench_policies():" in inspect.getsource(run.main)
