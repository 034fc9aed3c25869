"""The native trace format (dmsim.trace.native) and machine YAML (dmsim.machine_config).

The real traces are the source of truth: ftrace -> native -> parse must give back the
same events, checkpoints and machine.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dmsim.core.constants import PUD_PAGES
from dmsim.machine import Machine, MachineError
from dmsim.machine_config import load_machine, machine_from_dict, parse_size, qemu_e820
from dmsim.trace.errors import TraceError
from dmsim.trace.events import (
    CPAF_FORCE_SPLIT,
    CPAF_PRIMARY,
    EV_ALLOC,
    EV_CHECKPOINT,
    EV_CPA,
    EV_FREE,
    EV_KERNEL_RO,
    EV_SYSTEM_RUNNING,
    Checkpoint,
    EventArrays,
    Trace,
)
from dmsim.trace.ftrace import parse_ftrace
from dmsim.trace.native import looks_like_native, parse_native, write_native
from dmsim.trace.source import read_text

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "traces" / "real"
MACHINES = ROOT / "dmsim" / "configs" / "machines"
REAL_TRACES = ["vm2g-modules-bpf-secretmem.trace.gz", "vm4g-modules-bpf-secretmem.trace.gz"]

# A small machine: 2 GiB of RAM in two ranges with an e820 hole at [0x9fc00, 0x100000).
HEADER = """dmsim-trace 1
e820 0x0 0x1000 reserved
e820 0x1000 0x9fc00 usable
e820 0x9fc00 0xa0000 reserved
e820 0x100000 0x80000000 usable
gbpages off
"""


def native_text(trace: Trace) -> str:
    buf = io.StringIO()
    write_native(trace, buf)
    return buf.getvalue()


def machine_key(m: Machine):
    return (m.e820, m.gbpages, m.kernel, m.reserved)


def checkpoint_key(cps: list[Checkpoint]):
    return [(c.index, c.step, c.counter, c.value) for c in cps]


def assert_same_events(a: EventArrays, b: EventArrays) -> None:
    names = ("kind", "arg0", "arg1", "mask_set", "mask_clr", "flags")
    for name, x, y in zip(names, a.columns(), b.columns(), strict=True):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def thinned(t: Trace, n: int) -> Trace:
    """A trace with only its first n page events and all its other events."""
    page = (t.events.kind == EV_ALLOC) | (t.events.kind == EV_FREE)
    keep = ~page | (np.cumsum(page) <= n)
    ev = EventArrays(*(c[keep].copy() for c in t.events.columns()))
    return Trace(machine=t.machine, events=ev, checkpoints=t.checkpoints)


@pytest.fixture(scope="module")
def real_traces() -> dict[str, Trace]:
    out = {}
    for name in REAL_TRACES:
        path = str(REAL / name)
        out[name] = parse_ftrace(read_text(path)[0], path)
    return out


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", REAL_TRACES)
def test_real_trace_round_trip(real_traces, name):
    t = real_traces[name]
    text = native_text(t)
    u = parse_native(text, "converted.trace")
    assert_same_events(t.events, u.events)
    assert checkpoint_key(u.checkpoints) == checkpoint_key(t.checkpoints)
    assert machine_key(u.machine) == machine_key(t.machine)
    assert len(u.events) > 30000 and len(u.checkpoints) >= 45
    assert u.meta["skipped_lines"] == 0
    # every checkpoint points at its own `check` line in the new file
    lines = text.split("\n")
    for cp in u.checkpoints:
        assert lines[cp.line - 1] == f"check {cp.counter} {cp.value}"
    # writing again gives the same records (comments may differ: the meta is not carried)
    records = [ln for ln in text.split("\n") if not ln.startswith("#")]
    again = [ln for ln in native_text(u).split("\n") if not ln.startswith("#")]
    assert again == records


def test_written_text_is_grep_friendly(real_traces):
    text = native_text(real_traces["vm4g-modules-bpf-secretmem.trace.gz"])
    lines = text.split("\n")
    assert lines[0] == "dmsim-trace 1"
    assert "gbpages on" in lines
    assert any(re.fullmatch(r"cpa direct 0x[0-9a-f]+ \d+ set=0x[0-9a-f]+ clr=0x[0-9a-f]+( primary)?", ln)
               for ln in lines)
    assert any(ln.startswith("cpa highmap ") for ln in lines)
    assert "step secret:1500" in lines
    assert sum(ln.startswith("check ") for ln in lines) == 50


def test_round_trip_of_every_kind_and_flag():
    m = Machine(e820=[(0x1000, 0x80000000, 1)], gbpages=False)
    rows = [(EV_CPA, 0x100, 3, 0, 0x2, CPAF_PRIMARY | CPAF_FORCE_SPLIT),
            (EV_CPA, PUD_PAGES * 2 + 0x1000, 1, 1 << 63, 0, 0),  # high map, offset 0x1000
            (EV_SYSTEM_RUNNING, 0, 0, 0, 0, 0), (EV_KERNEL_RO, 0, 0, 0, 0, 0),
            (EV_ALLOC, 0x400, 10, 0, 0, 2), (EV_FREE, 0x400, 10, 0, 0, 0),
            (EV_CHECKPOINT, 0, 0, 0, 0, 0), (EV_CHECKPOINT, 1, 0, 0, 0, 0)]
    ev = EventArrays(*(np.array(col, dt) for col, dt in zip(zip(*rows, strict=True), (
        np.uint8, np.int64, np.int64, np.uint64, np.uint64, np.int32), strict=True)))
    cps = [Checkpoint(0, "boot", "DirectMap4k", 8, 0), Checkpoint(1, "", "DirectMap2M", 0, 0)]
    t = Trace(machine=m, events=ev, checkpoints=cps)
    text = native_text(t)
    assert "cpa highmap 0x1000 1 set=0x8000000000000000 clr=0x0\n" in text
    assert "primary force_split" in text and "\nstep\n" in text
    u = parse_native(text, "x.trace")
    assert_same_events(ev, u.events)
    assert checkpoint_key(u.checkpoints) == checkpoint_key(cps)
    assert machine_key(u.machine) == machine_key(m)


def test_writer_refuses_what_the_format_cannot_hold():
    m = Machine(e820=[(0x1000, 0x80000000, 1)])
    bad_flags = EventArrays(*(np.array([v], dt) for v, dt in zip(
        (EV_CPA, 1, 1, 0, 2, 4), (np.uint8, np.int64, np.int64, np.uint64, np.uint64, np.int32), strict=True)))
    with pytest.raises(ValueError, match="flags"):
        native_text(Trace(machine=m, events=bad_flags))
    orphan = Trace(machine=m, events=EventArrays.empty(), checkpoints=[Checkpoint(0, "boot", "DirectMap4k", 1, 0)])
    with pytest.raises(ValueError, match="not referenced"):
        native_text(orphan)


def test_doc_example_parses():
    doc = (ROOT / "docs" / "trace-format.md").read_text()
    example = re.search(r"## Example\n\n```\n(.*?)```", doc, re.S).group(1)
    t = parse_native(example, "example.trace")
    assert [c.step for c in t.checkpoints] == ["boot", "mod:xfs"]
    assert t.machine.kernel is not None and not looks_like_native("# tracer: nop\n")


# ---------------------------------------------------------------- reading


def test_looks_like_native():
    assert looks_like_native("dmsim-trace 1\ne820 ...")
    assert looks_like_native("\ufeffdmsim-trace 2\n")  # a version error, but native
    assert not looks_like_native("# tracer: nop\n")
    assert not looks_like_native("")


def test_comments_blank_lines_steps_and_defaults():
    t = parse_native(HEADER + "\n# a comment\n   # indented comment\nsystem_running\n"
                     "alloc 0x200 1\nstep  bpf:10:4000  \ncheck DirectMap4k 12\r\n", "t.trace")
    assert list(t.events.kind) == [EV_SYSTEM_RUNNING, EV_ALLOC, EV_CHECKPOINT]
    assert t.events.flags[1] == 2 << 8  # mt defaults to UNMOVABLE (0), zone to Normal (2)
    assert checkpoint_key(t.checkpoints) == [(0, "bpf:10:4000", "DirectMap4k", 12)]
    assert t.checkpoints[0].line == 13
    assert t.machine.gbpages is False and t.machine.name == "t.trace"
    assert t.meta["format"] == "native" and t.meta["machine_source"] == "inline"


def test_machine_file_relative_to_trace(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "t").mkdir()
    shutil.copy(MACHINES / "qemu-4g.yaml", tmp_path / "m" / "box.yaml")
    trace = tmp_path / "t" / "x.trace"
    trace.write_text("dmsim-trace 1\nmachine ../m/box.yaml\nalloc 0x13ff00 8\n")
    t = parse_native(trace.read_text(), str(trace))
    assert t.machine.name == "qemu-4g" and t.machine.max_pfn() == 0x140000


def test_given_machine_overrides_the_header():
    body = "dmsim-trace 1\nmachine does-not-exist.yaml\nalloc 0x13ff00 8\ncpa highmap 0x10 1 set=0x0 clr=0x2\n"
    m4 = load_machine(str(MACHINES / "qemu-4g.yaml"))
    t = parse_native(body, "x.trace", machine=m4)
    assert t.meta["machine_source"] == "given"
    assert t.events.arg0[1] == 5 * PUD_PAGES + 0x10  # high map above the 5 GiB direct map
    with pytest.raises(TraceError, match="cannot load the machine"):
        parse_native(body, "x.trace")
    # the addresses are checked against the machine in use
    with pytest.raises(TraceError, match="past the end of RAM"):
        parse_native(HEADER + "alloc 0x13ff00 8\n", "x.trace")
    assert len(parse_native(HEADER + "alloc 0x13ff00 8\n", "x.trace", machine=m4).events) == 1


def test_overflow_line_sets_meta():
    t = parse_native(HEADER + "overflow 10 20\nsystem_running\n", "x.trace")
    assert t.meta["overflow"] is True and t.meta["entries"] == (10, 20)
    assert "overflow 10 20\n" in native_text(t)


BAD_LINES = [
    # (line 8 of the trace, what the message must say)
    ("frobnicate 0x1", "unknown keyword 'frobnicate'"),
    ("cpa direct 100 1 set=0x0 clr=0x2", "expected a hex number"),
    ("cpa direct 0x100 x set=0x0 clr=0x2", "numpages: expected a decimal number"),
    ("cpa direct 0x100 1 set=0x0 primary", "set= and clr= are required"),
    ("cpa direct 0x100 1 set=0x0 clr=0x2 primary bogus", "unexpected field 'bogus'"),
    ("cpa direct 0x100 1 set=0x0 set=0x1 clr=0x2", "set= given twice"),
    ("cpa direct 0x100 1 set=0x10000000000000000 clr=0x2", "does not fit in 64 bits"),
    ("cpa sideways 0x100 1 set=0x0 clr=0x2", "direct or highmap"),
    ("cpa direct 0x7ffff 2 set=0x0 clr=0x2", "past the end of RAM"),
    ("cpa direct 0x80000 1 set=0x0 clr=0x2", "past the end of RAM"),
    ("cpa highmap 0x3ffff 2 set=0x0 clr=0x2", "1 GiB kernel image"),
    ("alloc 0x80000 0", "past the end of RAM"),
    ("free 0xa0 0", "e820 hole"),
    ("alloc 0x100 11", "order 11 is above 10"),
    ("alloc 0x101 1", "not aligned"),
    ("alloc 0x100 0 mt=6", "migratetype 6"),
    ("alloc 0x100 0 type=1", "unexpected field"),
    ("free 0x100 0 mt=1", "expected `free"),
    ("alloc -0x100 0", "expected a hex number"),
    ("check DirectMap3k 1", "unknown counter"),
    ("check DirectMap4k -1", "expected a decimal number"),
    ("check DirectMap4k", "expected `check"),
    ("system_running now", "expected `system_running`"),
    ("e820 0x100000000 0x140000000 usable", "header line"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_bad_event_lines_name_file_line_and_text(line, message):
    text = HEADER + "system_running\n" + line + "\nsystem_running\n"
    with pytest.raises(TraceError) as ei:
        parse_native(text, "bad.trace")
    e = ei.value
    assert (e.path, e.line) == ("bad.trace", 8)
    assert message in e.message
    assert e.text == line
    assert str(e).startswith("bad.trace:8: ")


BAD_HEADERS = [
    # (whole text, line, message)
    ("", 1, "first line must be `dmsim-trace 1`"),
    ("# tracer: nop\n", 1, "first line must be"),
    ("dmsim-trace 2\n", 1, "version 2"),
    ("dmsim-trace one\n", 1, "expected `dmsim-trace 1`"),
    ("dmsim-trace 1\nalloc 0x100 0\n", 2, "no machine"),
    ("dmsim-trace 1\ngbpages on\n", 0, "no machine"),
    ("dmsim-trace 1\ne820 0x0 0x1000 reserved\nalloc 0x0 0\n", 2, "no usable RAM"),
    ("dmsim-trace 1\ne820 0x1000 0x1000 usable\n", 2, "not above start"),
    ("dmsim-trace 1\ne820 0x0 0x2000 usable\ne820 0x1000 0x3000 usable\n", 3, "overlaps"),
    ("dmsim-trace 1\ne820 0x0 0x2000 ram-ish\n", 2, "unknown e820 type"),
    ("dmsim-trace 1\ne820 0x1000 0x80000000 usable\ngbpages yes\n", 3, "on or off"),
    ("dmsim-trace 1\ne820 0x1000 0x80000000 usable\ngbpages on\ngbpages off\n", 4, "second gbpages"),
    ("dmsim-trace 1\ne820 0x1000 0x80000000 usable\nkernel text=0xffffffff81000000\n", 3, "etext= missing"),
    ("dmsim-trace 1\nkernel text=0xffffffff81000000 etext=0xffffffff80000000 start_rodata=0x0 "
     "end_rodata=0x0 end_rodata_hpage_align=0x0 end=0x0 phys_base=0x0\n", 2, "outside the kernel image"),
    ("dmsim-trace 1\nkernel text=0xffffffff82000000 etext=0xffffffff81000000 start_rodata=0xffffffff82000000 "
     "end_rodata=0xffffffff82000000 end_rodata_hpage_align=0xffffffff82000000 end=0xffffffff82000000 "
     "phys_base=0x0\n", 2, "is above etext"),
    ("dmsim-trace 1\nreserve 0x2000 0x1000\n", 2, "not above start"),
    ("dmsim-trace 1\nmachine x.yaml\ne820 0x0 0x1000 usable\n", 3, "exclude each other"),
    ("dmsim-trace 1\ne820 0x1000 0x80000000 usable\nmachine x.yaml\n", 3, "exclude each other"),
    ("dmsim-trace 1\nmachine\n", 2, "expected `machine <path"),
    ("dmsim-trace 1\nmachine nope.yaml\nsystem_running\n", 2, "cannot load the machine"),
    ("dmsim-trace 1\noverflow 3 2\n", 2, "more entries kept than written"),
]


@pytest.mark.parametrize("text,line,message", BAD_HEADERS)
def test_bad_headers(text, line, message):
    with pytest.raises(TraceError) as ei:
        parse_native(text, "dir/bad.trace")
    assert ei.value.line == line and ei.value.path == "dir/bad.trace"
    assert message in ei.value.message


def test_lenient_counts_and_skips_bad_lines():
    text = (HEADER + "gbpages maybe\nsystem_running\nalloc 0x100 0\nalloc 0x101 1\nfrobnicate\n"
            "check DirectMap4k 4\ncheck DirectMap9k 4\nfree 0x100 0\n")
    with pytest.raises(TraceError):
        parse_native(text, "l.trace")
    t = parse_native(text, "l.trace", lenient=True)
    assert t.meta["skipped_lines"] == 4
    assert t.meta["first_skipped"].startswith("l.trace:7: ")  # the gbpages line (the header's second)
    assert list(t.events.kind) == [EV_SYSTEM_RUNNING, EV_ALLOC, EV_CHECKPOINT, EV_FREE]
    assert checkpoint_key(t.checkpoints) == [(0, "boot", "DirectMap4k", 4)]
    # fatal problems stay fatal
    with pytest.raises(TraceError, match="no machine"):
        parse_native("dmsim-trace 1\nalloc 0x100 0\n", "l.trace", lenient=True)


@pytest.mark.parametrize("suffix", ["gz", "xz", "zst"])
def test_compressed_native_traces(tmp_path, suffix, real_traces):
    from dmsim.load import load_trace

    t = thinned(real_traces["vm2g-modules-bpf-secretmem.trace.gz"], 2000)
    data = native_text(t).encode()
    if suffix == "gz":
        packed = gzip.compress(data)
    elif suffix == "xz":
        packed = lzma.compress(data, preset=1)
    else:
        import zstandard

        packed = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / f"x.trace.{suffix}"
    path.write_bytes(packed)
    text, _ = read_text(str(path))
    u = parse_native(text, str(path))
    assert_same_events(t.events, u.events)
    assert checkpoint_key(u.checkpoints) == checkpoint_key(t.checkpoints)
    v = load_trace(str(path))  # format detection picks the native reader
    assert v.meta["format"] == "native" and len(v.events) == len(t.events)
    assert v.meta["page_allocs"] + v.meta["page_frees"] == 2000


def test_cli_bad_native_trace_exits_3(tmp_path):
    from click.testing import CliRunner

    from dmsim.cli.main import cli

    path = tmp_path / "bad.trace"
    path.write_text(HEADER + "system_running\nalloc 0x100 99\n")
    r = CliRunner().invoke(cli, ["convert", str(path)])
    assert r.exit_code == 3
    assert f"{path}:8: order 99 is above 10" in r.output


# ---------------------------------------------------------------- machine YAML


@pytest.mark.parametrize("config,trace,ram", [("qemu-2g.yaml", REAL_TRACES[0], "2G"),
                                               ("qemu-4g.yaml", REAL_TRACES[1], "4G")])
def test_qemu_configs_match_the_real_traces(real_traces, config, trace, ram):
    m = load_machine(str(MACHINES / config))
    assert m.e820 == real_traces[trace].machine.e820
    assert m.gbpages is True and m.kernel is None and m.reserved == []
    assert qemu_e820(parse_size(ram)) == m.e820  # the `ram:` shorthand gives the same map


def test_shipped_configs():
    big = load_machine(str(MACHINES / "1tib.yaml"))
    assert big.gbpages and big.max_pfn() == (0x10100000000 >> 12)
    assert (1 << 40) < big.total_ram_pages() * 4096 < (1 << 40) + (3 << 30)
    nogb = load_machine(str(MACHINES / "64g-nogbpages.yaml"))
    assert nogb.gbpages is False and nogb.name == "64g-nogbpages"
    assert nogb.max_pfn() == (65 << 30) >> 12  # 3 GiB low + 61 GiB from 4 GiB
    assert 64 * 2**30 - nogb.total_ram_pages() * 4096 < 1 << 20
    for p in sorted(os.listdir(MACHINES)):
        assert load_machine(str(MACHINES / p)).ram_ranges()


def test_ram_shorthand_layouts():
    assert parse_size("512M") == 512 << 20 and parse_size("2GiB") == 2 << 30
    assert parse_size(4096 * 5000) == 4096 * 5000 and parse_size("0x80000000") == 2 << 30
    small = qemu_e820(1 << 30)
    assert (0x100000, (1 << 30) - 0x23000, 1) in small and all(e <= 1 << 32 or t != 1 for s, e, t in small)
    huge = qemu_e820(2 << 40)  # above-4G RAM would hit the HT hole: it starts at 1 TiB
    assert (1 << 40, (1 << 40) + (2 << 40) - (3 << 30), 1) in huge


def test_kernel_and_reserved_in_yaml(tmp_path):
    p = tmp_path / "k.yaml"
    p.write_text("ram: 2G\nkernel:\n  text: 0xffffffff81000000\n  etext: 0xffffffff81e00000\n"
                 "  start_rodata: 0xffffffff82000000\n  end_rodata: 0xffffffff82800000\n"
                 "  end_rodata_hpage_align: 0xffffffff82a00000\n  end: 0xffffffff83400000\n"
                 "  phys_base: 0x0\nreserved:\n  - {start: 0x1000000, end: 0x3400000}\n")
    m = load_machine(str(p))
    assert m.name == "k" and m.kernel.pa(m.kernel.end) == 0x3400000
    assert m.reserved == [(0x1000000, 0x3400000)]
    # a machine with a kernel survives the native round trip too
    t = Trace(machine=m, events=EventArrays.empty())
    assert machine_key(parse_native(native_text(t), "x.trace").machine) == machine_key(m)


BAD_CONFIGS = [
    # (yaml text, what the message must say: the key and the problem)
    ("ram: 2G\ncolour: blue\n", "colour: unknown key"),
    ("e820:\n  - {start: 0x1000, end: zz, type: usable}\n", "e820[0].end: not a number: 'zz'"),
    ("e820:\n  - {start: 0x2000, end: 0x1000, type: usable}\n", "e820[0].end: 0x1000 is not above start"),
    ("e820:\n  - {start: 0x1000, end: 0x80000000}\n", "e820[0].type: missing"),
    ("e820:\n  - {start: 0x1000, end: 0x80000000, type: ramish}\n", "e820[0].type: unknown e820 type"),
    ("e820:\n  - {start: 0x1000, end: 0x80000000, type: usable, node: 1}\n", "e820[0].node: unknown key"),
    ("e820:\n  - {start: 0x0, end: 0x2000, type: usable}\n  - {start: 0x1000, end: 0x3000, type: usable}\n",
     "e820: ranges overlap"),
    ("e820:\n  - {start: 0x0, end: 0x1000, type: reserved}\n", "e820: the memory map has no usable RAM"),
    ("e820: []\n", "e820: expected a non-empty list"),
    ("ram: 2G\ne820: []\n", "e820: give either e820 or ram"),
    ("name: x\n", "e820: missing"),
    ("ram: lots\n", "ram: not a size"),
    ("ram: 1000\n", "ram: 0x3e8 bytes: need a multiple of 4 KiB"),
    ("ram: 2G\ngbpages: maybe\n", "gbpages: expected true or false"),
    ("ram: 2G\nkernel: {text: 0xffffffff81000000}\n", "kernel.etext: missing"),
    ("ram: 2G\nreserved: [{start: 0x1000}]\n", "reserved[0].end: missing"),
    ("ram: 2G\nreserved: {start: 0x1000}\n", "reserved: expected a list"),
    ("- ram: 2G\n", "expected a mapping"),
    ("ram: [2G\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(MachineError) as ei:
        load_machine(str(p))
    assert str(ei.value).startswith(str(p))
    assert message in str(ei.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(MachineError, match="cannot read"):
        load_machine(str(tmp_path / "nope.yaml"))
    with pytest.raises(MachineError, match="where: ram: not a size"):
        machine_from_dict({"ram": True}, "where")
