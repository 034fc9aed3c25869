"""`dmsim policies`, `dmsim diff`, and --policy / --fail-on on `dmsim replay`.

Most tests here are formatting and gate unit tests: they replace
dmsim.simulate.simulate by a stub that returns fabricated counters per policy,
so the table layout and the gates are tested independently of the core. The
last tests run the real core on a tiny trace.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from click.testing import CliRunner

import dmsim.simulate as simulate_module
from dmsim.cli.main import cli
from dmsim.core import constants as C
from tests.helpers import SMALL_TRACE as SMALL

# A recorded trace with one allocation: --placement simulate gives it handle events.
WITH_ALLOC = SMALL.replace("system_running\n", "system_running\nalloc 0x5000 0\n")


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def trace(tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(SMALL)
    return str(p)


def _counters(l2_splits, merges, pte_tables, nr_4k, nr_2m):
    c = np.zeros(C.NR_COUNTERS, np.int64)
    c[C.DIRECT_MAP_LEVEL2_SPLIT] = l2_splits
    c[C.DIRECT_MAP_LEVEL1_MERGE] = merges
    c[C.NR_PTE_TABLES] = pte_tables
    c[C.NR_DIRECT_4K] = nr_4k
    c[C.NR_DIRECT_2M] = nr_2m
    return c


FAKE = {  # merge policy -> counters
    "none": _counters(12, 0, 12, 1024, 1000),
    "cpa_merge": _counters(12, 9, 12, 512, 1001),
    "rox_collapse": _counters(3, 0, 3, 1024, 1000),
}


@pytest.fixture()
def fake_core(monkeypatch):
    """Stub the core: counters by merge policy; records how it was called."""
    calls = []

    def fake(trace, progress=None, policy=None):
        calls.append((policy, simulate_module.names_allocations_by_handle(trace)))
        counters = FAKE["none" if policy is None else policy.merge].copy()
        st = types.SimpleNamespace(counters=counters)
        snaps = np.zeros((len(trace.checkpoints), C.NR_COUNTERS), np.int64)
        return simulate_module.Replayed(trace, counters.copy(), st, snaps)

    monkeypatch.setattr(simulate_module, "simulate", fake)
    return calls


# ---- dmsim policies -------------------------------------------------------------

def test_policies_plain_text(runner):
    r = runner.invoke(cli, ["policies"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "alloc", "merge", "description", "source"]
    rows = {ln.split()[0]: ln.split()[1:3] for ln in lines[1:]}
    assert rows["baseline"] == ["baseline", "none"]
    assert rows["migrate_unmapped_collapse"] == ["migrate_unmapped", "none"]
    assert rows["cpa_merge"] == ["baseline", "cpa_merge"]
    assert "41d88484c71c" in r.stdout
    assert "\x1b[" not in r.stdout


def test_policies_json(runner):
    r = runner.invoke(cli, ["policies", "--format", "json"])
    doc = json.loads(r.stdout)
    by = {p["name"]: p for p in doc["policies"]}
    assert by["migrate_unmapped_collapse"]["collapse_free_pageblock"] is True
    assert by["unmapped_alloc"]["unmapped_users"] == ["secretmem", "module", "bpf"]
    assert runner.invoke(cli, ["policies", "--format", "json"]).stdout == r.stdout


# ---- dmsim diff: table layout and gates (stubbed core) ----------------------------

def test_diff_table_layout(runner, trace, fake_core):
    r = runner.invoke(cli, ["diff", trace, "--policy", "baseline", "--policy", "cpa_merge",
                            "--policy", "rox_collapse"])
    assert r.exit_code == 0, r.output
    assert fake_core[0][0] is None  # baseline: the core's default
    assert [p.merge for p, _ in fake_core[1:]] == ["cpa_merge", "rox_collapse"]
    out = r.stdout
    assert out.startswith(f"trace: {trace}\nsha256: ")
    assert "placement: recorded" in out
    table = out[out.index("\n\n") + 2:].splitlines()
    head = table[0].split()
    assert head == ["baseline", "cpa_merge", "rox_collapse"]
    assert set(table[1]) == {"-", " "}
    assert table[2].split() == ["change", "%change", "change", "%change"]
    rows = {ln.split()[-1]: ln.split()[:-1] for ln in table[3:]}
    assert list(rows) == list(simulate_module.REPORT_COUNTERS)
    assert rows["direct_map_level2_splits"] == ["12", "0", "+0.0%", "12", "-9", "-75.0%", "3"]
    assert rows["direct_map_level1_merges"] == ["0", "+9", "+inf%", "9", "0", "+0.0%", "0"]
    assert rows["DirectMap4k"] == ["4096", "-2048", "-50.0%", "2048", "0", "+0.0%", "4096"]
    assert rows["DirectMap2M"][:3] == ["2048000", "+2048", "+0.1%"]
    # values right-aligned: every policy's value column ends where its name does
    for name in head:
        end = table[0].index(name) + len(name)
        for ln in table[3:]:
            assert ln[end - 1] != " " and ln[end] == " "
    # the counter name comes last, after two spaces
    assert table[3].endswith("  direct_map_level2_splits")


def test_diff_is_deterministic_and_json(runner, trace, fake_core):
    args = ["diff", trace, "--policy", "baseline", "--policy", "rox_collapse"]
    a = runner.invoke(cli, args)
    assert a.stdout == runner.invoke(cli, args).stdout
    r = runner.invoke(cli, [*args, "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [p["name"] for p in doc["policies"]] == ["baseline", "rox_collapse"]
    assert doc["reference"] == "baseline" and doc["placement"] == "recorded"
    assert doc["trace"]["path"] == trace and len(doc["trace"]["sha256"]) == 64
    assert doc["counters"]["direct_map_level2_splits"] == {"baseline": 12, "rox_collapse": 3}
    assert doc["changes"]["direct_map_level2_splits"] == {
        "rox_collapse": {"change": -9, "percent": -75.0}}
    assert list(doc["counters"]) == list(simulate_module.REPORT_COUNTERS)
    assert doc["fail_on"] == {"gates": [], "breaches": []}
    r = runner.invoke(cli, ["diff", trace, "--policy", "baseline", "--policy", "cpa_merge",
                            "--format", "json"])
    doc = json.loads(r.stdout)
    assert doc["changes"]["direct_map_level1_merges"]["cpa_merge"] == {"change": 9,
                                                                       "percent": None}


def test_diff_gates(runner, trace, fake_core):
    base = ["diff", trace, "--policy", "baseline", "--policy", "cpa_merge",
            "--policy", "rox_collapse"]
    r = runner.invoke(cli, [*base, "--fail-on", "direct_map_level2_splits<-50%"])
    assert r.exit_code == 1
    assert "direct_map_level2_splits" in r.stdout  # the results are printed first
    assert r.stderr.splitlines() == [
        "dmsim: --fail-on direct_map_level2_splits<-50%: rox_collapse: direct_map_level2_splits "
        "is 3 against 12 under baseline (-9, -75.0%)"]
    # absolute: every policy, the first included
    r = runner.invoke(cli, [*base, "--fail-on", "direct_map_level2_splits>=12"])
    assert r.exit_code == 1
    assert [ln.split(": ")[2] for ln in r.stderr.splitlines()] == ["baseline", "cpa_merge"]
    r = runner.invoke(cli, [*base, "--fail-on", "direct_map_level2_splits>+0",
                            "--fail-on", "DirectMap1G!=0", "--fail-on", "nr_pte_tables>+10%"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, [*base, "--fail-on", "direct_map_level1_merges>+100%",
                            "--format", "json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["fail_on"]["breaches"] == [
        {"gate": "direct_map_level1_merges>+100%", "policy": "cpa_merge",
         "counter": "direct_map_level1_merges", "value": 9, "reference": 0}]


@pytest.mark.parametrize("args, message", [
    (["--policy", "baseline", "--policy", "cpa_merge", "--fail-on", "splits>0"],
     "'splits>0': unknown counter 'splits'"),
    (["--policy", "baseline", "--policy", "cpa_merge", "--fail-on", "nr_pte_tables>5%"],
     "'nr_pte_tables>5%': a percentage"),
    (["--policy", "baseline"], "at least two --policy"),
    (["--policy", "baseline", "--policy", "baseline"], "'baseline' given twice"),
    (["--policy", "baseline", "--policy", "cpa_merge+rox_collapse"], "one merge policy at a time"),
    (["--policy", "baseline", "--policy", "nope"], "nope: unknown policy"),
    (["--policy", "baseline", "--policy", "migrate_unmapped", "--placement", "recorded"],
     "needs --placement simulate"),
])
def test_diff_usage_errors_exit_2(runner, trace, fake_core, args, message):
    r = runner.invoke(cli, ["diff", trace, *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.stderr.split())
    assert "Traceback" not in r.output and r.stdout == ""


def test_diff_bad_policy_file_names_file_and_key(runner, trace, fake_core, tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("alloc: baseline\nmerge: cpa-merge\n")
    r = runner.invoke(cli, ["diff", trace, "--policy", "baseline", "--policy", str(p)])
    assert r.exit_code == 3  # a file the user gave that is malformed: bad input
    assert f"{p}: merge: unknown merge policy 'cpa-merge'" in " ".join(r.stderr.split())


def test_diff_placement_does_not_depend_on_the_policies_listed(runner, tmp_path, fake_core):
    """baseline vs cpa_merge on a recorded trace runs with recorded placement, whatever
    else is listed: an allocation policy without --placement simulate is refused (it
    used to switch every column to simulated placement, changing the others' numbers)."""
    p = tmp_path / "t.trace"
    p.write_text(WITH_ALLOC)
    pair = ["diff", str(p), "--policy", "baseline", "--policy", "cpa_merge"]
    r = runner.invoke(cli, pair)
    assert r.exit_code == 0, r.output
    assert "placement: recorded (the default for a recorded trace, for every policy)" in r.stdout
    assert [by_handle for _, by_handle in fake_core] == [False, False]
    fake_core.clear()
    r = runner.invoke(cli, [*pair, "--policy", "migrate_unmapped+cpa_merge"])
    assert r.exit_code == 2 and r.stdout == "" and fake_core == []
    assert "needs --placement simulate" in " ".join(r.stderr.split())
    # asked for: every policy runs with simulated placement, and the header and JSON say why
    r = runner.invoke(cli, [*pair[:4], "--policy", "migrate_unmapped+cpa_merge",
                            "--placement", "simulate"])
    assert r.exit_code == 0, r.output
    assert "placement: simulate (--placement simulate, for every policy)" in r.stdout
    assert [by_handle for _, by_handle in fake_core] == [True, True]
    assert fake_core[0][0] is None
    assert (fake_core[1][0].alloc, fake_core[1][0].merge) == ("migrate_unmapped", "cpa_merge")
    doc = json.loads(runner.invoke(cli, [*pair, "--placement", "simulate", "--format",
                                         "json"]).stdout)
    assert (doc["placement"], doc["placement_reason"]) == ("simulate", "--placement simulate")
    doc = json.loads(runner.invoke(cli, [*pair, "--format", "json"]).stdout)
    assert (doc["placement"], doc["placement_reason"]) == (
        "recorded", "the default for a recorded trace")


def test_diff_placement_of_a_trace_by_handle(runner, tmp_path, fake_core):
    p = tmp_path / "h.trace"
    p.write_text(SMALL.replace("system_running\n", "system_running\npage_alloc 1 0\n"))
    r = runner.invoke(cli, ["diff", str(p), "--policy", "baseline", "--policy",
                            "migrate_unmapped"])
    assert r.exit_code == 0, r.output
    assert "placement: simulate (the trace names allocations by handle" in r.stdout
    r = runner.invoke(cli, ["diff", str(p), "--policy", "baseline", "--policy", "cpa_merge",
                            "--placement", "recorded"])
    assert r.exit_code == 2 and "no recorded placement" in " ".join(r.stderr.split())


def test_diff_allocation_policy_on_a_trace_without_allocations(runner, trace, fake_core):
    r = runner.invoke(cli, ["diff", trace, "--policy", "baseline",
                            "--policy", "migrate_unmapped+cpa_merge", "--placement", "simulate"])
    assert r.exit_code == 0, r.output
    assert "no page allocations to place" in r.stderr
    assert (fake_core[1][0].alloc, fake_core[1][0].merge) == ("baseline", "cpa_merge")


# ---- dmsim replay --policy / --fail-on (stubbed core) --------------------------------

def test_replay_policy_and_absolute_gates(runner, trace, fake_core):
    r = runner.invoke(cli, ["replay", trace, "--policy", "rox_collapse",
                            "--fail-on", "direct_map_level2_splits>2"])
    assert r.exit_code == 1
    assert r.stdout.startswith("direct_map_level2_splits 3\n")
    assert r.stderr.strip() == ("dmsim: --fail-on direct_map_level2_splits>2: rox_collapse: "
                                "direct_map_level2_splits is 3")
    assert fake_core[-1][0].merge == "rox_collapse"
    r = runner.invoke(cli, ["replay", trace, "--fail-on", "direct_map_level2_splits>12"])
    assert r.exit_code == 0 and fake_core[-1][0] is None
    r = runner.invoke(cli, ["replay", trace, "--format", "json", "--policy", "cpa_merge"])
    assert json.loads(r.stdout)["policy"]["merge"] == "cpa_merge"


@pytest.mark.parametrize("args, message", [
    (["--fail-on", "direct_map_level2_splits>+10%"], "only absolute thresholds"),
    (["--fail-on", "direct_map_level2_splits>-1"], "only absolute thresholds"),
    (["--fail-on", "direct_map_level2_splits"], "no operator"),
    (["--policy", "migrate_unmapped"], "needs --placement simulate"),
    (["--policy", "x+"], "empty name"),
])
def test_replay_usage_errors_exit_2(runner, trace, fake_core, args, message):
    r = runner.invoke(cli, ["replay", trace, *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.stderr.split())
    assert r.stdout == ""


# ---- the real core ------------------------------------------------------------------

def test_diff_end_to_end(runner, trace):
    r = runner.invoke(cli, ["diff", trace, "--policy", "baseline", "--policy", "cpa_merge",
                            "--format", "json", "--fail-on", "direct_map_level2_splits>+0"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["counters"]["direct_map_level2_splits"]["baseline"] == 1
    assert doc["counters"]["DirectMap4k"]["baseline"] == 6004
    assert doc["counters"]["nr_pte_tables"]["baseline"] == 1


def test_replay_policy_end_to_end(runner, trace):
    r = runner.invoke(cli, ["replay", trace, "--policy", "cpa_merge",
                            "--fail-on", "direct_map_level2_splits>0"])
    assert r.exit_code == 1
    assert r.stdout.startswith("direct_map_level2_splits 1\n")
    assert "cpa_merge: direct_map_level2_splits is 1" in r.stderr
