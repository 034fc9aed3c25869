"""The command line: exit codes, stdout/stderr, stdin and compression."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dmsim.cli.main import cli
from tests.helpers import SMALL_TRACE as SMALL

HERE = os.path.dirname(__file__)
REAL = os.path.join(HERE, "..", "traces", "real", "vm2g-modules-bpf-secretmem.trace.gz")



@pytest.fixture()
def runner():
    return CliRunner()


def test_help_does_not_load_the_core():
    code = ("import sys; import dmsim.cli.main as m; "
            "from click.testing import CliRunner; CliRunner().invoke(m.cli, ['--help']); "
            "print('numba' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_replay_prints_vmstat_lines(runner, tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(SMALL)
    r = runner.invoke(cli, ["replay", str(p)])
    assert r.exit_code == 0, r.output
    assert r.stdout == "direct_map_level2_splits 1\ndirect_map_level3_splits 0\n"


def test_meminfo_format_is_the_kernels(runner, tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(SMALL)
    r = runner.invoke(cli, ["replay", "--format", "meminfo", str(p)])
    # arch_report_meminfo(): "DirectMap4k:    %8lu kB\n"
    assert r.stdout.splitlines() == ["DirectMap4k:        6004 kB", "DirectMap2M:     2091008 kB",
                                     "DirectMap1G:           0 kB"]


def test_verify_passes_and_fails_with_exit_codes(runner, tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(SMALL)
    r = runner.invoke(cli, ["replay", "--verify", str(p)])
    assert r.exit_code == 0, r.output
    assert "all 3 checkpoints match" in r.stderr
    p.write_text(SMALL.replace("splits 1", "splits 2"))
    r = runner.invoke(cli, ["replay", "--verify", str(p)])
    assert r.exit_code == 1
    assert "1 of 3 checkpoints differ" in r.stderr and "line 8" in r.stderr


def test_json_is_deterministic_and_complete(runner):
    a = runner.invoke(cli, ["replay", "--format", "json", REAL])
    b = runner.invoke(cli, ["replay", "--format", "json", REAL])
    assert a.exit_code == 0 and a.stdout == b.stdout
    doc = json.loads(a.stdout)
    assert doc["input"]["sha256"] and doc["dmsim_version"]
    assert doc["verify"]["checked"] == len(doc["checkpoints"]) > 0
    assert set(doc["counters"]) >= {"direct_map_level2_splits", "DirectMap4k"}


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, "zstd", None])
def test_compressed_and_stdin(runner, tmp_path, compress):
    data = SMALL.encode()
    if compress == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    elif compress is not None:
        data = compress(data)
    r = runner.invoke(cli, ["replay", "-"], input=data)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("direct_map_level2_splits 1")


def test_bad_line_names_file_line_and_text(runner, tmp_path):
    p = tmp_path / "bad.trace"
    p.write_text(SMALL.replace("system_running\n", "system_running\nfrobnicate 12\n"))
    r = runner.invoke(cli, ["replay", str(p)])
    assert r.exit_code == 3
    assert f"{p}:6:" in r.stderr and "frobnicate 12" in r.stderr
    assert "Traceback" not in r.output and r.stdout == ""


def test_lenient_skips_and_counts(runner, tmp_path):
    p = tmp_path / "bad.trace"
    p.write_text(SMALL.replace("system_running\n", "system_running\nfrobnicate 12\n"))
    r = runner.invoke(cli, ["replay", "--lenient", str(p)])
    assert r.exit_code == 0
    assert "1 bad lines skipped" in r.stderr


def test_ftrace_garbage_line(runner, tmp_path):
    p = tmp_path / "bad.txt"
    text = gzip.decompress(open(REAL, "rb").read()).decode().split("\n")
    text.insert(40, "this is not ftrace")
    p.write_text("\n".join(text))
    r = runner.invoke(cli, ["replay", str(p)])
    assert r.exit_code == 3 and f"{p}:41:" in r.stderr


def test_missing_file_and_unknown_format(runner, tmp_path):
    r = runner.invoke(cli, ["replay", str(tmp_path / "nope")])
    assert r.exit_code == 3 and "cannot read" in r.stderr
    p = tmp_path / "x"
    p.write_text("hello\n")
    r = runner.invoke(cli, ["replay", str(p)])
    assert r.exit_code == 3 and "neither" in r.stderr


def test_usage_error_is_2(runner):
    assert runner.invoke(cli, ["replay", "--format", "xml", REAL]).exit_code == 2


def test_convert_round_trip_and_no_overwrite(runner, tmp_path):
    out = tmp_path / "n.trace"
    r = runner.invoke(cli, ["convert", REAL, "-o", str(out)])
    assert r.exit_code == 0, r.output
    a = runner.invoke(cli, ["replay", "--format", "meminfo", REAL]).stdout
    b = runner.invoke(cli, ["replay", "--format", "meminfo", str(out)]).stdout
    assert a == b
    before = out.read_text()
    r = runner.invoke(cli, ["convert", REAL, "-o", str(out)])
    assert r.exit_code == 2 and "not overwriting" in r.stderr  # a usage error: the -o
    assert out.read_text() == before


@pytest.mark.parametrize("command", [["convert", REAL], ["gen", "boot", "--scale", "0.01"]])
def test_an_output_that_cannot_be_written_exits_73(runner, tmp_path, command):
    # -o into a directory that does not exist: exit 73 (cannot write output) with the
    # path and the reason, no temporary file left behind (was: an internal error, exit 70)
    out = tmp_path / "no-such-dir" / "out.trace"
    r = runner.invoke(cli, [*command, "-o", str(out)])
    assert r.exit_code == 73, r.output
    assert r.stderr == f"dmsim: {out}: cannot write: No such file or directory\n"
    assert not (tmp_path / "no-such-dir").exists() and os.listdir(tmp_path) == []


def test_machine_override(runner, tmp_path):
    # SMALL's own map is a 2 GiB guest; configs/machines/qemu-4g.yaml is the 4 GiB one.
    # By hand (tests/test_layout.py): the 4 GiB boot maps 989 x 4K, 1022 x 2M and counts
    # four 1G leaves (the top GiB three times); the trace's one set_memory_ro() splits the
    # 2M leaf at pfn 0x2000 in both: +512 x 4K, -1 x 2M. Only DirectMap1G differs.
    p = tmp_path / "t.trace"
    p.write_text(SMALL)
    cfg = os.path.join(HERE, "..", "dmsim", "configs", "machines", "qemu-4g.yaml")
    own = runner.invoke(cli, ["replay", "--format", "meminfo", str(p)])
    other = runner.invoke(cli, ["replay", "--format", "meminfo", "--machine", cfg, str(p)])
    assert own.exit_code == other.exit_code == 0, other.output
    assert own.stdout.splitlines() == ["DirectMap4k:        6004 kB", "DirectMap2M:     2091008 kB",
                                       "DirectMap1G:           0 kB"]
    assert other.stdout.splitlines() == [f"DirectMap4k:    {(989 + 512) * 4:8d} kB",
                                         f"DirectMap2M:    {(1022 - 1) * 2048:8d} kB",
                                         f"DirectMap1G:    {4 << 20:8d} kB"]
    # the trace's own map given as a file changes nothing
    same = os.path.join(HERE, "..", "dmsim", "configs", "machines", "qemu-2g.yaml")
    again = runner.invoke(cli, ["replay", "--format", "meminfo", "--machine", same, str(p)])
    assert again.stdout == own.stdout


def test_sample_window_accepts_a_value_passed_while_reading(runner, tmp_path):
    # the kernel read vmstat before a kworker's split that the trace orders first
    text = SMALL.replace("step one\ncheck direct_map_level2_splits 1\n",
                         "step one\ncheck direct_map_level2_splits 1\n"
                         "sample\ncpa direct 0x20000 1 set=0x0 clr=0x2 primary\n"
                         "check direct_map_level2_splits 1\n")
    p = tmp_path / "w.trace"
    p.write_text(text.replace("check DirectMap4k 6004", "check DirectMap4k 8052")
                     .replace("check DirectMap2M 2091008", "check DirectMap2M 2088960"))
    r = runner.invoke(cli, ["replay", "--verify", str(p)])
    assert r.exit_code == 0, r.output
    assert "passed 1..2 while read" in r.stderr
    p.write_text(text.replace("sample\n", ""))  # no window: exact at the marker
    assert runner.invoke(cli, ["replay", "--verify", str(p)]).exit_code == 1


def test_zstd_reads_every_frame(runner, tmp_path):
    """A .zst of several frames (`zstd` on a stream, or `cat a.zst b.zst`) is one trace:
    all frames are read, and a cut-off frame is bad input, not a short trace."""
    import zstandard

    lines = SMALL.splitlines(keepends=True)
    cut = lines.index("step one\n")
    z = zstandard.ZstdCompressor()
    data = z.compress("".join(lines[:cut]).encode()) + z.compress("".join(lines[cut:]).encode())
    p = tmp_path / "t.trace.zst"
    p.write_bytes(data)
    r = runner.invoke(cli, ["replay", "--verify", str(p)])
    assert r.exit_code == 0, r.output
    assert "all 3 checkpoints match" in r.stderr  # the checkpoints are in the second frame
    p.write_bytes(data[:-4])
    r = runner.invoke(cli, ["replay", str(p)])
    assert r.exit_code == 3 and "a zstd frame is cut off" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("numba_first", [False, True])
def test_numba_cache_dir_is_honoured_whatever_was_imported_first(tmp_path, numba_first):
    """dmsim keys numba's cache by its source (dmsim/__init__.py) under
    $XDG_CACHE_HOME/dmsim/: also when numba was imported before dmsim, when numba has
    read its environment already. A compiled function's index file lands there."""
    code = ("import numba\n" if numba_first else "") + (
        "import os, dmsim\n"
        "from numba.core import config\n"
        "from dmsim.core.buddy import _ffs\n"
        "assert _ffs(8) == 3\n"
        "print(os.environ['NUMBA_CACHE_DIR']); print(config.CACHE_DIR)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.join(HERE, ".."), check=True).stdout.split("\n")
    assert out[0] == out[1] and out[0].startswith(str(tmp_path / "dmsim" / "numba-"))
    assert any(name.startswith("buddy._ffs") and name.endswith(".nbi")
               for _, _, files in os.walk(out[0]) for name in files)
