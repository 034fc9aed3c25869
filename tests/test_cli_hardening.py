"""Ordinary mistakes and damaged outputs (issue 15): nothing destroyed, no silent wrong
number, one line and a documented exit code for each.

Exit codes (README): 2 a wrong flag, or an -o dmsim will not write; 3 a file the user
gave that is missing or malformed (trace, machine, policy, scenario); 4 --verify with
nothing to verify; 73 an output that cannot be written.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from dmsim.cli.main import cli
from tests.helpers import SMALL_TRACE as SMALL

HERE = os.path.dirname(__file__)
ROOT = os.path.join(HERE, "..")
MACHINES = os.path.join(ROOT, "dmsim", "configs", "machines")
REAL8 = os.path.join(ROOT, "traces", "real", "vm8g-modules.trace.gz")
DMSIM = [sys.executable, "-c", "from dmsim.cli.main import cli; cli()"]


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def small(tmp_path):
    p = tmp_path / "t.trace"
    p.write_text(SMALL)
    return str(p)


def convert(runner, src, out, *extra):
    return runner.invoke(cli, ["convert", src, "-o", str(out), *extra])


# ---- 1. -o never replaces what is not a regular file ----------------------------------

def test_a_symlink_is_written_through_and_stays_a_link(runner, small, tmp_path):
    target = tmp_path / "real.trace"
    target.write_text("old\n")
    link = tmp_path / "link.trace"
    link.symlink_to(target)
    r = convert(runner, small, link)
    assert r.exit_code == 2 and "exists; not overwriting" in r.stderr  # the target exists
    r = convert(runner, small, link, "--force")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("dmsim-trace 1\n")
    # a dangling link: its target is created, the link kept
    target.unlink()
    r = convert(runner, small, link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and target.read_text().startswith("dmsim-trace 1\n")


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_directories_devices_and_fifos_are_refused(runner, small, tmp_path, force):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    d = tmp_path / "dir"
    d.mkdir()
    for out, kind in ((d, "a directory"), (fifo, "a FIFO"), ("/dev/zero", "a character device")):
        r = convert(runner, small, out, *force)
        assert r.exit_code == 2, r.output
        assert r.stderr == f"dmsim: {out}: is {kind}; dmsim writes only regular files " \
                           "(`-o -` writes to stdout)\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and d.is_dir()
    assert stat.S_ISCHR(os.lstat("/dev/zero").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["dir", "fifo", "t.trace"]  # no temporary file left


def test_stdout_like_targets_are_written_directly(runner, small):
    r = runner.invoke(cli, ["convert", small, "-o", "/dev/stdout"])
    assert r.exit_code == 0 and r.stdout.startswith("dmsim-trace 1\n")
    assert r.stdout == runner.invoke(cli, ["convert", small]).stdout
    r = runner.invoke(cli, ["convert", small, "-o", "/dev/null"])
    assert r.exit_code == 0 and r.stdout == ""
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_file_named_like_the_temporary_one_is_left_alone(runner, small, tmp_path):
    out = tmp_path / "out.trace"
    mine = tmp_path / "out.trace.tmp"
    mine.write_text("mine\n")
    r = convert(runner, small, out)
    assert r.exit_code == 0, r.output
    assert mine.read_text() == "mine\n"
    assert sorted(os.listdir(tmp_path)) == ["out.trace", "out.trace.tmp", "t.trace"]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


# ---- 3. outputs that cannot be written: exit 73, the path and the reason ----------------

@pytest.mark.parametrize("args", [["replay", "{t}"], ["replay", "--format", "json", "{t}"],
                                  ["convert", "{t}"], ["gen", "boot", "--scale", "0.01", "-o", "-"],
                                  ["policies"]])
def test_stdout_on_dev_full_is_one_line_and_73(small, args):
    with open("/dev/full", "w") as full:
        r = subprocess.run(DMSIM + [a.format(t=small) for a in args], stdout=full,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert r.returncode == 73, r.stderr
    assert r.stderr.splitlines()[-1] == "dmsim: stdout: cannot write: No space left on device"
    assert "Traceback" not in r.stderr and "Exception" not in r.stderr


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, err):
    from dmsim.cli.output import resolve_output, write_output

    out = tmp_path / "out.trace.gz"
    out.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        raise OSError(err, os.strerror(err))

    with pytest.raises(SystemExit) as e:
        write_output(resolve_output(str(out), force=True), write)
    assert e.value.code == 73
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.trace.gz"]


def test_unwritable_output_message(tmp_path, capsys):
    from dmsim.cli.output import resolve_output, write_output

    out = resolve_output(str(tmp_path / "out.trace"), force=False)

    def write(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit):
        write_output(out, write)
    assert capsys.readouterr().err == \
        f"dmsim: {tmp_path / 'out.trace'}: cannot write: No space left on device\n"


# ---- 7. convert compresses by the output's extension ------------------------------------

def test_convert_compresses_by_extension(runner, small, tmp_path):
    import zstandard

    plain = runner.invoke(cli, ["convert", small]).stdout.encode()
    magic = {"gz": b"\x1f\x8b", "zst": b"\x28\xb5\x2f\xfd", "xz": b"\xfd7zXZ\x00"}
    unpack = {"gz": gzip.decompress, "xz": lzma.decompress,
              "zst": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}
    for ext in ("gz", "zst", "xz"):
        out = tmp_path / f"x.trace.{ext}"
        r = convert(runner, small, out)
        assert r.exit_code == 0, r.output
        data = out.read_bytes()
        assert data.startswith(magic[ext]) and unpack[ext](data) == plain
        again = tmp_path / f"y.trace.{ext}"
        convert(runner, small, again)
        assert again.read_bytes() == data  # deterministic
        r = runner.invoke(cli, ["replay", str(out)])
        assert r.exit_code == 0 and r.stdout.startswith("direct_map_level2_splits 1\n")


def test_gen_compresses_by_extension_too(runner, tmp_path):
    out = tmp_path / "g.trace.xz"
    r = runner.invoke(cli, ["gen", "boot", "--scale", "0.01", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert lzma.decompress(out.read_bytes()).startswith(b"dmsim-trace 1\n")


# ---- 2. a machine that does not cover the trace -----------------------------------------

@pytest.mark.parametrize("placement", ["recorded", "simulate"])
def test_a_machine_that_does_not_cover_the_trace_is_bad_input(runner, placement):
    small_machine = os.path.join(MACHINES, "qemu-2g.yaml")
    r = runner.invoke(cli, ["replay", "--machine", small_machine, "--placement", placement,
                            REAL8])
    assert r.exit_code == 3, r.output
    assert r.stdout == "" and "Traceback" not in r.output
    line = r.stderr.splitlines()[0]
    # the ftrace reader checks each block against the machine's RAM as it reads
    # (load.check_machine_covers() is the backstop for every reader)
    assert line.startswith(f"dmsim: {REAL8}:24: mm_page_alloc: pages [0x1042f0, 0x1042f1) are "
                           "not RAM")
    assert "mm_page_alloc: page=000000006a552630 pfn=0x1042f0 order=0" in line


def test_a_bigger_machine_covers_the_trace(runner, small):
    r = runner.invoke(cli, ["replay", "--machine", os.path.join(MACHINES, "qemu-4g.yaml"), small])
    assert r.exit_code == 0, r.output


# ---- 4. --scale is a length --------------------------------------------------------------

@pytest.mark.parametrize("scale", ["1e9", "inf", "nan", "0", "-1", "-inf"])
def test_gen_scale_out_of_range_is_a_usage_error(runner, tmp_path, scale):
    out = tmp_path / "g.trace"
    r = runner.invoke(cli, ["gen", "boot", "--scale", scale, "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "--scale" in r.stderr and "above 0 and at most 10000" in r.stderr
    assert not out.exists()


# ---- 5. one rule: a malformed file is 3, a wrong flag is 2 -------------------------------

def test_exit_codes_of_files_and_flags(runner, small, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("merge: [\n")
    missing = str(tmp_path / "missing.yaml")
    cases = [
        (["replay", "--policy", str(bad_yaml), small], 3, "not valid YAML"),
        (["replay", "--policy", missing, small], 3, "no such policy file"),
        (["replay", "--policy", "nosuchpolicy", small], 2, "unknown policy"),
        (["replay", "--machine", str(bad_yaml), small], 3, "not valid YAML"),
        (["replay", "--machine", missing, small], 3, "cannot read"),
        (["gen", str(bad_yaml), "-o", str(tmp_path / "g")], 3, "not valid YAML"),
        (["gen", missing, "-o", str(tmp_path / "g")], 3, "cannot read"),
        (["gen", "nosuchscenario", "-o", str(tmp_path / "g")], 2, "no such scenario"),
        (["convert", small, "-o", small, "--force"], 2, "is the input trace"),
        (["convert", small, "-o", str(bad_yaml)], 2, "exists; not overwriting"),
    ]
    for args, code, message in cases:
        r = runner.invoke(cli, args)
        assert r.exit_code == code, (args, r.output)
        assert message in r.stderr and "Traceback" not in r.output, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 or code == 2, (args, r.stderr)
    assert bad_yaml.read_text() == "merge: [\n"


def test_a_flag_that_does_not_fit_the_trace_is_a_usage_error(runner, small, tmp_path):
    # the trace is fine; the flag asks for what it cannot give (was exit 3)
    r = runner.invoke(cli, ["replay", "--format", "buddyinfo", small])
    assert r.exit_code == 2 and "or --placement simulate" in r.stderr and r.stdout == ""
    h = tmp_path / "h.trace"
    h.write_text(SMALL.replace("system_running\n", "system_running\npage_alloc 1 0\n"))
    r = runner.invoke(cli, ["replay", "--placement", "shadow", str(h)])
    assert r.exit_code == 2 and "needs a recorded trace" in r.stderr


# ---- 6. the user's text is printed as it is ----------------------------------------------

def test_user_text_is_not_rich_markup(runner, tmp_path):
    p = tmp_path / "t.trace"
    bad = "frobnicate :100: [red]x[/red] :smile: [bold]"
    p.write_text(SMALL.replace("system_running\n", f"system_running\n{bad}\n")
                 .replace("step one", "step [red]one[/red] :smile:"))
    r = runner.invoke(cli, ["replay", "--lenient", "--verify", str(p)])
    assert r.exit_code == 0, r.output
    assert bad in r.stderr
    assert "[red]one[/red] :smile:" in r.stderr
    assert "\U0001f4af" not in r.stderr and "\U0001f604" not in r.stderr


def test_policy_names_in_warnings_are_not_markup(runner, small, tmp_path):
    p = tmp_path / "x[bold]:smile:.yaml"
    p.write_text("alloc: migrate_unmapped\ndescription: ':smile: [bold]x'\n")
    r = runner.invoke(cli, ["diff", small, "--policy", "baseline", "--policy", str(p),
                            "--placement", "simulate", "--progress"])
    assert r.exit_code == 0, r.output
    assert "x[bold]:smile:: the trace has no page allocations to place" in r.stderr
    assert "\U0001f604" not in r.stderr


# ---- 8. --verify prints the requested format; nothing to verify is said -------------------

def test_verify_keeps_the_format_on_stdout(runner, small):
    r = runner.invoke(cli, ["replay", "--verify", "--format", "meminfo", small])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["DirectMap4k:        6004 kB", "DirectMap2M:     2091008 kB",
                                     "DirectMap1G:           0 kB"]
    assert "checkpoints: kernel vs dmsim" in r.stderr and "all 3 checkpoints match" in r.stderr
    r = runner.invoke(cli, ["replay", "--verify", small])
    assert r.stdout == "direct_map_level2_splits 1\ndirect_map_level3_splits 0\n"


def test_verify_without_checkpoints_verifies_nothing_and_says_so(runner, tmp_path):
    p = tmp_path / "t.trace"
    p.write_text("".join(ln + "\n" for ln in SMALL.splitlines() if not ln.startswith("check")))
    r = runner.invoke(cli, ["replay", "--verify", str(p)])
    assert r.exit_code == 4, r.output
    assert r.stdout.startswith("direct_map_level2_splits 1\n")
    assert "no kernel checkpoints: nothing was verified" in r.stderr
    assert "match" not in r.stderr
    # without --verify, no checkpoints is fine
    assert runner.invoke(cli, ["replay", str(p)]).exit_code == 0


def test_the_load_backstop_names_the_event_past_ram():
    # load.check_machine_covers(): whatever reader made the trace, an event on a pfn
    # the machine does not hold is bad input naming its line
    from dmsim.load import check_machine_covers
    from dmsim.machine import Machine
    from dmsim.trace.errors import TraceError
    from dmsim.trace.events import EV_ALLOC, EventBuilder, Trace

    b = EventBuilder()
    b.append(EV_ALLOC, 0x90000, 0)
    m = Machine(e820=[(0x1000, 0x9FC00, 1), (0x100000, 0x80000000, 1)], name="m")
    t = Trace(machine=m, events=b.finish(), lines=np.array([7]))
    with pytest.raises(TraceError) as e:
        check_machine_covers(t, "x.trace")
    assert e.value.line == 7 and "pfn 0x90000" in str(e.value)
