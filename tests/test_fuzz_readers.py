"""Fuzzing the readers: mutated real ftrace and native traces (byte flips, deleted
and inserted spans, cut files, compressed or not) replay, or fail as bad input
(exit 3), or fail verification (exit 1): never an internal error (exit 70) or a
traceback.

HYPOTHESIS_PROFILE=ci (CI, `make test`) runs a fixed set of CI_EXAMPLES examples
per test (derandomized: the same ones every run); `make fuzz` runs FUZZ_EXAMPLES
fresh ones. A failure prints the mutations that give it.
"""

from __future__ import annotations

import gzip
import lzma
import os

import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmsim.cli.main import cli
from tests.helpers import SMALL_TRACE

ROOT = os.path.join(os.path.dirname(__file__), "..")
CI_EXAMPLES = 60
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5000")) \
    if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else CI_EXAMPLES
OK_EXITS = (0, 1, 3)  # replayed, verification failed, bad input


def _real_slice(name: str, head: int, body: int) -> bytes:
    """The header of a real trace (e820, tracer header) and `body` lines from its
    events, among them the system_running marker and checkpoints."""
    with gzip.open(os.path.join(ROOT, "traces", "real", name), "rb") as f:
        lines = f.read().split(b"\n")
    start = next(i for i, ln in enumerate(lines) if b"system_running" in ln) - body // 2
    return b"\n".join(lines[:head] + lines[start:start + body]) + b"\n"


SEEDS = {
    "ftrace-6.1": _real_slice("vm2g-modules-bpf-secretmem.trace.gz", 24, 160),
    "ftrace-5.10": _real_slice("vm2g-5.10-modules-bpf.trace.gz", 22, 120),
    "native": SMALL_TRACE.encode(),
}
PACK = {"plain": lambda b: b, "gz": gzip.compress, "xz": lzma.compress,
        "zst": zstandard.ZstdCompressor().compress}


@st.composite
def mutations(draw):
    """A list of (op, position as a fraction of the length, bytes)."""
    n = draw(st.integers(1, 4))
    ops = []
    for _ in range(n):
        op = draw(st.sampled_from(["flip", "delete", "insert", "cut", "dup"]))
        at = draw(st.floats(0, 1, allow_nan=False))
        if op == "insert":
            blob = draw(st.one_of(
                st.binary(min_size=1, max_size=40),
                st.sampled_from([b"\n", b" ", b"=", b":", b"0x", b"-1", b"99999999999999999999",
                                 b"order=99 ", b"pfn=0xffffffffff ", b"CPU:0 [LOST 3 EVENTS]\n",
                                 b"\x00", b"\xff\xfe", b"# entries-in-buffer/entries-written: 9/9\n",
                                 b"e820 0x0 0x1000 usable\n", b"dmsim: step x\n"])))
        elif op == "flip":
            blob = bytes([draw(st.integers(1, 255))])
        else:
            blob = bytes([draw(st.integers(1, 64))])  # span length
        ops.append((op, at, blob))
    return ops


def mutate(data: bytes, ops) -> bytes:
    for op, at, blob in ops:
        i = int(at * len(data))
        if op == "flip" and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ blob[0]]) + data[i + 1:]
        elif op == "delete":
            data = data[:i] + data[i + blob[0]:]
        elif op == "insert":
            data = data[:i] + blob + data[i:]
        elif op == "cut":
            data = data[:i]
        elif op == "dup":  # a span repeated: duplicated lines, markers, headers
            data = data[:i] + data[i:i + 4 * blob[0]] + data[i:]
    return data


def check(tmp_path, data: bytes, *args: str) -> None:
    p = tmp_path / "fuzzed.trace"
    p.write_bytes(data)
    r = CliRunner().invoke(cli, ["replay", *args, str(p)])
    where = f"args {args}, exit {r.exit_code}: {r.output[-600:]!r}"
    assert r.exit_code in OK_EXITS, where
    assert "Traceback" not in r.output and "internal error" not in r.output, where
    if r.exit_code == 3:
        assert str(p) in r.stderr, where  # bad input names the file


@pytest.mark.parametrize("seed", sorted(SEEDS))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(ops=mutations(), lenient=st.booleans(), simulate=st.booleans())
def test_mutated_text_never_crashes(tmp_path, seed, ops, lenient, simulate):
    check(tmp_path, mutate(SEEDS[seed], ops), *(["--lenient"] if lenient else []),
          *(["--placement", "simulate"] if simulate else []))


@pytest.mark.parametrize("pack", ["gz", "xz", "zst"])
@settings(max_examples=max(EXAMPLES // 3, 20), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(ops=mutations(), seed=st.sampled_from(sorted(SEEDS)))
def test_mutated_compressed_files_never_crash(tmp_path, pack, ops, seed):
    check(tmp_path, mutate(PACK[pack](SEEDS[seed]), ops))
