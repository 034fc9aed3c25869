"""Every shipped trace (traces/gen-*, traces/real/*) replays cleanly under every
policy, and docs/results.md is what `make results` prints for them."""

from __future__ import annotations

import os

import pytest

from dmsim.report import results as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def collected():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        yield R.collect()
    finally:
        os.chdir(cwd)


def test_there_are_shipped_traces():
    os.chdir(ROOT)
    paths = R.shipped_traces()
    assert any("/real/" in p for p in paths) and any("gen-" in p for p in paths)
    for p in R.SEED_TRACES:
        assert p in paths


def test_every_trace_replays_cleanly_under_every_policy(collected):
    results, seed = collected
    bad = {(p, pol): row["problems"]
           for p, res in list(results.items()) + list(seed.items())
           for pol, row in res.items() if pol not in ("kernel", "shadow")
           if any(row["problems"].values())}
    assert not bad


def test_results_md_is_up_to_date(collected):
    results, seed = collected
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        committed = f.read()
    assert R.render(results, seed) == committed, "run `make results` and commit docs/results.md"
