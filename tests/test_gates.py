"""--fail-on expressions: parsing, evaluation and the messages."""

from __future__ import annotations

import math

import pytest

from dmsim.gates import (
    ABSOLUTE,
    DELTA,
    PERCENT,
    GateError,
    evaluate,
    format_percent,
    parse_gate,
    percent_change,
)

KNOWN = ("direct_map_level2_splits", "DirectMap2M", "nr_pte_tables")


@pytest.mark.parametrize("text, counter, op, kind, threshold", [
    ("direct_map_level2_splits>0", "direct_map_level2_splits", ">", ABSOLUTE, 0),
    (" direct_map_level2_splits >= 12 ", "direct_map_level2_splits", ">=", ABSOLUTE, 12),
    ("DirectMap2M<+10", "DirectMap2M", "<", DELTA, 10),
    ("DirectMap2M<=-10", "DirectMap2M", "<=", DELTA, -10),
    ("nr_pte_tables>+10%", "nr_pte_tables", ">", PERCENT, 10),
    ("nr_pte_tables < -2.5%", "nr_pte_tables", "<", PERCENT, -2.5),
    ("nr_pte_tables==0", "nr_pte_tables", "==", ABSOLUTE, 0),
    ("nr_pte_tables!=+0", "nr_pte_tables", "!=", DELTA, 0),
])
def test_parse(text, counter, op, kind, threshold):
    g = parse_gate(text, KNOWN)
    assert (g.counter, g.op, g.kind, g.threshold) == (counter, op, kind, threshold)
    assert g.text == text.strip()
    assert g.relative == (kind != ABSOLUTE)


@pytest.mark.parametrize("text, message", [
    ("direct_map_level2_splits=0", "`=` is not an operator (use ==)"),
    ("direct_map_level2_splits", "no operator"),
    ("", "empty expression"),
    (">0", "expected a counter name first"),
    ("direct_map_level2_splits>ten", "THRESHOLD is a number"),
    ("direct_map_level2_splits>>0", "expected COUNTER OP THRESHOLD"),
    ("direct_map_level2_splits>10%", "needs a sign"),
    ("direct_map_level2_split>0", "unknown counter 'direct_map_level2_split' (known: "),
    ("direct_map_level2_splits=>0", "`=>` is not an operator (use >=)"),
])
def test_malformed_expressions_quote_the_text(text, message):
    with pytest.raises(GateError) as e:
        parse_gate(text, KNOWN)
    assert repr(text) in str(e.value) and message in str(e.value)


def test_relative_forms_can_be_refused():
    assert parse_gate("nr_pte_tables>3", KNOWN, allow_relative=False).kind == ABSOLUTE
    for text in ("nr_pte_tables>+3", "nr_pte_tables>-3%"):
        with pytest.raises(GateError, match="only absolute thresholds"):
            parse_gate(text, KNOWN, allow_relative=False)


def test_any_counter_without_a_list():
    assert parse_gate("whatever>1").counter == "whatever"


def test_percent_change_and_format():
    assert percent_change(12, 3) == -75.0
    assert format_percent(percent_change(12, 3)) == "-75.0%"
    assert format_percent(0.0) == "+0.0%"
    assert format_percent(-0.01) == "+0.0%"  # no -0.0%
    assert format_percent(33.333) == "+33.3%"
    assert percent_change(0, 0) == 0.0
    assert percent_change(0, 5) == math.inf
    assert format_percent(percent_change(0, 5)) == "+inf%"


def test_measure_and_breach():
    g = parse_gate("direct_map_level2_splits>+10%", KNOWN)
    assert g.breached(12, 10) and not g.breached(11, 10)
    assert g.breached(1, 0)  # from 0: +inf%
    assert not parse_gate("direct_map_level2_splits<-50%").breached(5, 10)
    assert parse_gate("direct_map_level2_splits<=-50%").breached(5, 10)
    assert parse_gate("DirectMap2M<-4096").breached(0, 8192)
    with pytest.raises(ValueError):
        g.measure(5)


def test_evaluate_applies_absolute_to_all_and_relative_to_all_but_the_first():
    values = {"base": {"nr_pte_tables": 10}, "a": {"nr_pte_tables": 12},
              "b": {"nr_pte_tables": 5}}
    names = ["base", "a", "b"]
    gates = [parse_gate("nr_pte_tables>4", KNOWN), parse_gate("nr_pte_tables>+0", KNOWN),
             parse_gate("nr_pte_tables<=-50%", KNOWN)]
    out = evaluate(gates, names, values)
    assert [(b.gate.text, b.policy) for b in out] == [
        ("nr_pte_tables>4", "base"), ("nr_pte_tables>4", "a"), ("nr_pte_tables>4", "b"),
        ("nr_pte_tables>+0", "a"), ("nr_pte_tables<=-50%", "b")]
    assert out[0].message() == "--fail-on nr_pte_tables>4: base: nr_pte_tables is 10"
    assert out[3].message() == ("--fail-on nr_pte_tables>+0: a: nr_pte_tables is 12 against 10 "
                                "under base (+2, +20.0%)")
    assert out[4].message().endswith("is 5 against 10 under base (-5, -50.0%)")
    # a relative gate never fires on the first policy, even alone
    assert evaluate([parse_gate("nr_pte_tables!=+0", KNOWN)], ["base"], values) == []
