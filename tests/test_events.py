"""The core mirrors the event-format constants (it does not import the I/O side)."""

from __future__ import annotations

from dmsim.core import placement, replay
from dmsim.trace import events


def test_event_kinds_and_flags_agree():
    for name in ("EV_CPA", "EV_SYSTEM_RUNNING", "EV_KERNEL_RO", "EV_CHECKPOINT",
                 "CPAF_PRIMARY", "CPAF_FORCE_SPLIT"):
        assert getattr(replay, name) == getattr(events, name), name
        assert getattr(placement, name) == getattr(events, name), name
    for name in ("EV_H_ALLOC", "EV_H_FREE", "EV_H_VMALLOC", "EV_H_VFREE", "EV_H_CPA",
                 "VFREE_RESET_PERMS"):
        assert getattr(placement, name) == getattr(events, name), name


def test_event_builder_grows_and_keeps_order():
    b = events.EventBuilder(capacity=2)
    for i in range(5):
        b.append(events.EV_CPA, i, i + 1, 2, 0, events.CPAF_PRIMARY)
    ev = b.finish()
    assert len(ev) == 5 and list(ev.arg0) == [0, 1, 2, 3, 4] and list(ev.arg1) == [1, 2, 3, 4, 5]
    assert [c.dtype for c in ev.columns()] == [dt for _, dt in events.COLUMNS]
