"""Reading a trace as a stream: bounded chunks, compressed or not, and what the
readers say about damaged or incomplete input (issue 15's reader items)."""

from __future__ import annotations

import gzip
import json
import lzma

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from dmsim.cli.main import cli
from dmsim.load import load_trace
from dmsim.trace import source
from dmsim.trace.errors import TraceError
from dmsim.trace.events import EV_ALLOC
from dmsim.trace.ftrace import parse_ftrace
from dmsim.trace.native import parse_native
from tests.helpers import SMALL_TRACE
from tests.test_ftrace_reader import E820, SHAPES

HEADER = "=== TRACE\n# tracer: nop\n#\n"
EVENTS = SHAPES["trace-6.1"]
ALLOC = EVENTS[0]  # pfn=0x7390 order=2


def ftrace_text(lines, entries=None) -> str:
    head = HEADER if entries is None else \
        HEADER + f"# entries-in-buffer/entries-written: {entries}/{entries}   #P:1\n"
    return E820 + head + "\n".join(lines) + "\n"


@pytest.fixture()
def runner():
    return CliRunner()


def replay(runner, path, *args):
    return runner.invoke(cli, ["replay", *args, str(path)])


# ---------------------------------------------------------------- chunks and streams


def test_chunked_reading_gives_the_events_of_one_piece(monkeypatch):
    """Chunks cut anywhere (here every few hundred bytes) give the same trace as one piece."""
    text = ftrace_text(EVENTS * 50).encode()
    whole = parse_ftrace(text, "t")
    pieces = [text[i:i + 333] for i in range(0, len(text), 333)]
    from dmsim.trace.ftrace import read_ftrace

    cut = read_ftrace(source.line_chunks(pieces, "t"), "t")
    for a, b in zip(whole.events.columns(), cut.events.columns(), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(whole.lines, cut.lines)
    assert [c.line for c in whole.checkpoints] == [c.line for c in cut.checkpoints]


def test_native_chunked_reading_gives_the_events_of_one_piece():
    from dmsim.trace.native import read_native

    text = SMALL_TRACE.encode()
    whole = parse_native(text, "t")
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    cut = read_native(source.line_chunks(pieces, "t"), "t")
    for a, b in zip(whole.events.columns(), cut.events.columns(), strict=True):
        assert np.array_equal(a, b)
    assert [(c.line, c.step, c.value) for c in whole.checkpoints] == \
        [(c.line, c.step, c.value) for c in cut.checkpoints]


@pytest.mark.parametrize("fmt", ["plain", "gz", "xz", "zst"])
def test_every_compression_streams_in_chunks(tmp_path, monkeypatch, fmt):
    """Small raw and output chunks: several reads and several decompressor calls
    per file, every frame or member read, the digest that of the bytes as given."""
    import hashlib

    monkeypatch.setattr(source, "RAW_CHUNK", 1000)
    monkeypatch.setattr(source, "OUT_CHUNK", 1500)
    monkeypatch.setattr(source._ZstdFrame, "SLICE", 100)
    text = ftrace_text(EVENTS * 40).encode()
    pack = {"plain": lambda b: b, "gz": gzip.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress}[fmt]
    raw = pack(text[:3000]) + pack(text[3000:])  # two members / streams / frames
    p = tmp_path / f"t.{fmt}"
    p.write_bytes(raw)
    t = load_trace(str(p))
    assert t.meta["sha256"] == hashlib.sha256(raw).hexdigest()
    assert np.array_equal(t.events.kind, parse_ftrace(text, "t").events.kind)


@pytest.mark.parametrize("fmt", ["gz", "xz", "zst"])
def test_a_cut_compressed_file_is_bad_input_naming_it(runner, tmp_path, fmt):
    pack = {"gz": gzip.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress}[fmt]
    raw = pack(ftrace_text(EVENTS * 200).encode())
    p = tmp_path / f"cut.trace.{fmt}"
    p.write_bytes(raw[: len(raw) * 2 // 3])
    r = replay(runner, p)
    assert r.exit_code == 3, r.output
    assert str(p) in r.stderr and "cut off" in r.stderr and r.stdout == ""


def test_garbage_after_a_compressed_stream_is_bad_input(runner, tmp_path):
    p = tmp_path / "t.trace.gz"
    p.write_bytes(gzip.compress(SMALL_TRACE.encode()) + b"this is not gzip")
    r = replay(runner, p)
    assert r.exit_code == 3 and "corrupt compressed data" in r.stderr


def test_stdin_streams_too(runner):
    r = runner.invoke(cli, ["replay", "-"], input=gzip.compress(SMALL_TRACE.encode()))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("direct_map_level2_splits 1\n")


# ---------------------------------------------------------------- incomplete traces


def test_lost_events_warn_with_the_count_and_fail_verify(runner, tmp_path):
    lines = EVENTS[:3] + ["CPU:0 [LOST 42 EVENTS]", "CPU:1 [LOST 8 EVENTS]"] + EVENTS[3:]
    t = parse_ftrace(ftrace_text(lines), "t")
    assert t.meta["lost_events"] == 50
    p = tmp_path / "lost.trace"
    p.write_text(ftrace_text(lines))
    r = replay(runner, p, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert any("50 events were lost" in w for w in doc["warnings"])
    assert doc["verify"]["incomplete"]
    r = replay(runner, p, "--verify")
    assert r.exit_code == 1 and "50 events were lost" in r.stderr
    p.write_text(ftrace_text(EVENTS))  # the same trace without them is not failed:
    assert replay(runner, p, "--verify").exit_code == 4  # it has no checkpoints to verify


def test_a_trace_shorter_than_its_header_says_is_reported_and_fails_verify(runner, tmp_path):
    p = tmp_path / "short.trace"
    p.write_text(ftrace_text(EVENTS, entries=len(EVENTS)))
    assert replay(runner, p, "--verify").exit_code == 4  # complete, no checkpoints: not 1
    assert load_trace(str(p)).meta["missing_entries"] == 0
    p.write_text(ftrace_text(EVENTS, entries=len(EVENTS) + 6))  # 6 lines cut off
    assert load_trace(str(p)).meta["missing_entries"] == 6
    r = replay(runner, p, "--verify")
    assert r.exit_code == 1 and "holds 4 of the 10 entries" in r.stderr
    r = replay(runner, p)
    assert r.exit_code == 0 and "holds 4 of the 10 entries" in r.stderr


def test_a_real_trace_cut_on_a_line_boundary_fails_verify(runner, tmp_path):
    """Issue 15: half of vm2g-modules replayed with exit 0 and 4 splits instead of 12."""
    with gzip.open("traces/real/vm2g-modules.trace.gz", "rb") as f:
        lines = f.read().split(b"\n")
    p = tmp_path / "half.trace"
    p.write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    r = replay(runner, p, "--verify")
    assert r.exit_code == 1 and "cut short" in r.stderr


# ---------------------------------------------------------------- bad lines


def test_order_above_max_order_is_bad_input_naming_the_line(runner, tmp_path):
    bad = ALLOC.replace("order=2", "order=99")
    with pytest.raises(TraceError, match="order 99 is above 10") as e:
        parse_ftrace(ftrace_text([EVENTS[2], bad]), "t")
    assert e.value.line == len(E820.splitlines()) + 3 + 2 and "order=99" in e.value.text
    p = tmp_path / "o.trace"
    p.write_text(ftrace_text([EVENTS[2], bad]))
    r = replay(runner, p, "--placement", "simulate")
    assert r.exit_code == 3 and f"{p}:{e.value.line}:" in r.stderr and "Traceback" not in r.output
    t = parse_ftrace(ftrace_text([EVENTS[2], bad, ALLOC]), "t", lenient=True)
    assert t.meta["skipped_lines"] == 1 and np.count_nonzero(t.events.kind == EV_ALLOC) == 1


@pytest.mark.parametrize("pfn", ["0x7ffdd", "0x80000", "0x7fffff", "0x9f"])
def test_a_block_outside_ram_is_bad_input(pfn):
    """The e820 map of E820 has RAM [0x1, 0x9f) and [0x100, 0x7ffdd) (pages)."""
    bad = ALLOC.replace("pfn=0x7390", f"pfn={pfn}").replace("order=2", "order=0")
    with pytest.raises(TraceError, match="not RAM in the e820 map"):
        parse_ftrace(ftrace_text([bad]), "t")


def test_a_machine_that_does_not_cover_the_trace_is_bad_input(runner, tmp_path):
    """--machine of 1 GiB under a trace of a 2 GiB guest: which pfn, which line."""
    p = tmp_path / "t.trace"
    p.write_text(ftrace_text([ALLOC.replace("pfn=0x7390", "pfn=0x7f000")]))
    m = tmp_path / "m.yaml"
    m.write_text("ram: 1G\n")
    r = replay(runner, p, "--machine", str(m))
    assert r.exit_code == 3 and "0x7f000" in r.stderr and f"{p}:" in r.stderr


def test_junk_glued_to_an_event_line_is_bad_input(runner, tmp_path):
    junk = "A" * (10 << 20)
    for line in (ALLOC + junk, ALLOC + " " + junk, EVENTS[1] + junk, EVENTS[2] + " x" * 100):
        p = tmp_path / "j.trace"
        p.write_text(ftrace_text([EVENTS[2], line]))
        r = replay(runner, p)
        assert r.exit_code == 3, line[:200]
        assert f"{p}:{len(E820.splitlines()) + 5}:" in r.stderr
        assert len(r.stderr) < 500  # the offending text, shortened


def test_short_trailing_junk_after_the_last_field_is_bad_input():
    with pytest.raises(TraceError, match="malformed mm_page_free"):
        parse_ftrace(ftrace_text([EVENTS[2] + " junk"]), "t")


def test_blank_and_carriage_return_endings_are_fine():
    t = parse_ftrace(ftrace_text([ln + " \r" for ln in EVENTS]), "t")
    assert np.count_nonzero(t.events.kind == EV_ALLOC) == 1


def test_an_e820_line_after_the_first_event_is_bad_input():
    late = "[    0.000000] BIOS-e820: [mem 0x0000000080000000-0x00000000bfffffff] usable"
    with pytest.raises(TraceError, match="e820 line after the first event"):
        parse_ftrace(ftrace_text(EVENTS[:1] + [late] + EVENTS[1:]), "t")


def test_other_tracepoints_are_counted_in_a_warning(runner, tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(ftrace_text(["   init-1  [000] .....  3.6: sched_switch: prev_comm=init"] * 3
                             + EVENTS))
    r = replay(runner, p, "--format", "json")
    assert r.exit_code == 0, r.output
    assert "3 events of other tracepoints skipped: sched_switch 3" in json.loads(r.stdout)["warnings"]


@pytest.mark.parametrize("fmt", ["gz", "xz", "zst"])
def test_a_member_ending_on_a_read_boundary_is_followed_by_the_next(tmp_path, monkeypatch, fmt):
    """Two members / streams / frames, the first exactly one read long, zero padding
    after the second: the whole text, and a digest of every byte."""
    import hashlib

    pack = {"gz": gzip.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress}[fmt]
    text = ftrace_text(EVENTS * 40).encode()
    first = pack(text[:2000])
    raw = first + pack(text[2000:]) + b"\0" * 16
    monkeypatch.setattr(source, "RAW_CHUNK", len(first))
    p = tmp_path / f"t.{fmt}"
    p.write_bytes(raw)
    data, digest = source.read_data(str(p))
    assert data == text and digest == hashlib.sha256(raw).hexdigest()
