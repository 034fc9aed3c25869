"""`dmsim gen`: determinism, every scenario replays without handle errors, --scale,
scenario errors, the module and BPF models against the kernel's rules."""

from __future__ import annotations

import gzip
import io
import os

import numpy as np
import pytest
from click.testing import CliRunner

from dmsim.cli.main import cli
from dmsim.gen import bpf, modules
from dmsim.gen import rows as R
from dmsim.gen.generate import build, write
from dmsim.gen.scenario import SCENARIO_DIR, ScenarioError, load_scenario

SCENARIOS = ("boot", "modules", "bpftrace", "secretmem", "mix")
SMALL = 0.1  # --scale for the tests: boot, the first pipe burst and a few workload steps


def text(name, seed=1, scale=SMALL, groups=True) -> bytes:
    buf = io.BytesIO()
    write(build(load_scenario(name), seed, scale), buf, groups)
    return buf.getvalue()


def scenario_file(tmp_path, body: str, name="s.yaml") -> str:
    p = tmp_path / name
    p.write_text(body.replace("BASE", os.path.join(SCENARIO_DIR, "_base.yaml")))
    return str(p)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b, c = text("mix", 1), text("mix", 1), text("mix", 2)
    assert a == b
    assert a != c
    assert a.startswith(b"dmsim-trace 1\n")


def test_gzip_output_is_deterministic_too(tmp_path):
    runner = CliRunner()
    outs = []
    for k in range(2):
        p = tmp_path / f"t{k}.trace.gz"
        r = runner.invoke(cli, ["gen", "secretmem", "--scale", "0.05", "-o", str(p)])
        assert r.exit_code == 0, r.output
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]
    assert gzip.decompress(outs[0]).startswith(b"dmsim-trace 1\n")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_replays_without_handle_errors(name, tmp_path):
    from dmsim.core import constants as C
    from dmsim.load import load_trace
    from dmsim.simulate import simulate

    p = tmp_path / f"{name}.trace"
    p.write_bytes(text(name))
    trace = load_trace(str(p))
    r = simulate(trace)
    assert r.counters[C.NR_HANDLE_ERRORS] == 0
    assert r.buddy.stat("alloc_fail") == 0
    assert r.counters[C.SYSTEM_RUNNING] == 1


def test_unmapped_groups_are_written_and_can_be_left_out():
    t = text("mix").decode()
    assert " unmapped=module\n" in t and " unmapped=bpf\n" in t and " unmapped=secretmem\n" in t
    assert "unmapped=" not in text("mix", groups=False).decode()


def test_events_grow_linearly_with_scale(tmp_path):
    # without pipe bursts (their times are random) the rest is rate x time
    path = scenario_file(tmp_path, "include: " + os.path.join(SCENARIO_DIR, "modules.yaml")
                         + "\nbackground: {pipes: null}\n")
    sc = load_scenario(path)
    e = {s: len(build(sc, 1, s)) for s in (2.0, 4.0, 8.0)}
    assert e[2.0] < e[4.0] < e[8.0]
    ratio = (e[8.0] - e[4.0]) / (e[4.0] - e[2.0])
    assert 1.7 < ratio < 2.3, e


def test_live_memory_does_not_grow_with_scale():
    a = build(load_scenario("boot"), 1, 1.0).stats["peak_live_mib"]
    b = build(load_scenario("boot"), 1, 4.0).stats["peak_live_mib"]
    assert b < 2 * a


@pytest.mark.parametrize("body, message", [
    ("include: BASE\nduration: many\n", "duration: expected a number, got 'many'"),
    ("include: BASE\nmodules: {cycles: 3, pool: [xfs], cylces: 4}\n", "modules.cylces: unknown key"),
    ("include: BASE\nmodules: {cycles: 3, pool: [no_such_module]}\n",
     "modules.pool: 'no_such_module': no such module"),
    ("include: BASE\nsecretmem: {processes: 2, pages: {lognormal: {median: 4}}, lifetime: 1}\n",
     "secretmem.pages: lognormal: give exactly one of sigma, p75, p90, p99"),
    ("include: BASE\nbackground:\n  streams:\n    - {name: x, mt: sticky, rate: 1, lifetime: 1}\n",
     "background.streams[0].mt: 'sticky': expected one of"),
    ("include: BASE\nmachine: {ram: lots}\n", "machine: ram"),
    ("include: nothere.yaml\n", "include: nothere.yaml: no such file"),
    ("duration: [\n", "not valid YAML"),
    ("duration: 1\n", "machine: missing"),
])
def test_bad_scenarios_name_file_and_key(tmp_path, body, message):
    path = scenario_file(tmp_path, body)
    with pytest.raises(ScenarioError) as e:
        build(load_scenario(path), 1, 1.0)
    assert message in str(e.value)
    assert str(e.value).startswith(path) or "_base.yaml" in str(e.value)


def test_a_bad_key_in_an_included_file_names_that_file(tmp_path):
    scenario_file(tmp_path, "include: BASE\nboot: {settle: soon}\n", "inc.yaml")
    top = scenario_file(tmp_path, "include: inc.yaml\n", "top.yaml")
    with pytest.raises(ScenarioError, match=r"inc\.yaml: boot\.settle: expected a number"):
        build(load_scenario(top), 1, 1.0)


def test_cli_bad_scenario_file_exit_3_unknown_name_exit_2(tmp_path):
    # a file the user gave that is malformed is bad input (3); a wrong name is usage (2)
    path = scenario_file(tmp_path, "include: BASE\nduration: many\n")
    r = CliRunner().invoke(cli, ["gen", path, "-o", str(tmp_path / "out.trace")])
    assert r.exit_code == 3
    assert "Traceback" not in r.output
    assert r.stderr.startswith(f"dmsim: {path}: duration:")
    assert not (tmp_path / "out.trace").exists()
    r = CliRunner().invoke(cli, ["gen", "nosuchscenario", "-o", str(tmp_path / "out.trace")])
    assert r.exit_code == 2 and "known: boot, bpftrace, bpftrace-nopack, mix, modules, secretmem" in r.stderr


def test_too_much_live_memory_is_refused(tmp_path):
    path = scenario_file(tmp_path, "include: BASE\nmachine: {ram: 64M}\n")
    with pytest.raises(ScenarioError, match="allocated at once"):
        build(load_scenario(path), 1, 1.0)


def test_cli_stdout_and_no_overwrite(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["gen", "boot", "--scale", "0.05", "-o", "-"])
    assert r.exit_code == 0
    assert r.stdout.startswith("dmsim-trace 1\n")
    assert "wrote" in r.stderr
    out = tmp_path / "t.trace"
    out.write_text("keep me")
    r = runner.invoke(cli, ["gen", "boot", "--scale", "0.05", "-o", str(out)])
    assert r.exit_code == 2 and out.read_text() == "keep me"
    r = runner.invoke(cli, ["gen", "boot", "--scale", "0.05", "-o", str(out), "--force"])
    assert r.exit_code == 0 and out.read_text().startswith("dmsim-trace 1\n")


def test_module_load_matches_the_recorded_kernel():
    """virtio_blk and crc32c_generic in traces/real/vm2g-bpftrace.trace.gz: the kernel
    made 12 and 6 alias pages read-only (module_enable_ro twice: core text + rodata +
    init text) and reset 4 and 3 init pages when it freed the init area."""
    table = modules.load_table()
    for name, ro_pages, init_pages in (("virtio_blk", 12, 4), ("crc32c_generic", 6, 3)):
        rows, objs = R.Rows(), R.Objects()
        ms = modules.ModuleSystem(table, rows, objs, _Const(0.01), np.random.default_rng(0))
        ms._load(table[name], 0.0)
        _, op, obj, b, c = rows.columns()
        assert int(c[op == R.SET_RO].sum()) == ro_pages
        sizes = dict(zip(obj[op == R.VMALLOC_MODULE].tolist(), b[op == R.VMALLOC_MODULE].tolist(),
                         strict=True))
        init = obj[op == R.VFREE_RESET]
        assert [sizes[int(i)] for i in init] == [init_pages]
        assert (c[(op >= R.SET_RO) & (op <= R.SET_NX)] > 0).all()  # no "rest of handle" calls


def test_modprobe_loads_dependencies_first_and_r_unloads_unused_ones():
    table = modules.load_table()
    rows, objs = R.Rows(), R.Objects()
    ms = modules.ModuleSystem(table, rows, objs, _Const(0.01), np.random.default_rng(0))
    ms.modprobe("xfs", 0.0)
    assert list(ms.loaded) == ["libcrc32c", "xfs"]
    ms.modprobe_r("xfs", 1.0)
    assert ms.loaded == {}


def test_bpf_programs_share_a_pack_and_packs_off_gives_each_its_own_area():
    rows, objs = R.Rows(), R.Objects()
    jit = bpf.JitMemory(rows, objs, packs=True)
    imgs = [jit.alloc(500, 0.0) for _ in range(100)]
    assert jit.new_packs == 1
    assert [i[2] for i in imgs[:3]] == [0, 9, 18]  # round_up(500 + 8 + 16, 64) / 64 chunks
    for i in imgs:
        jit.free(i, 1.0)
    _, op, *_ = rows.columns()
    assert list(op) == [R.VMALLOC_BPF, R.SET_RO, R.SET_X, R.VFREE_RESET]
    rows, objs = R.Rows(), R.Objects()
    jit = bpf.JitMemory(rows, objs, packs=False)
    jit.alloc(500, 0.0)
    jit.alloc(5000, 0.0)
    _, op, obj, b, c = rows.columns()
    assert list(b[op == R.VMALLOC_BPF]) == [1, 2]


def test_first_fit_is_bitmap_find_next_zero_area():
    m = np.zeros(16, bool)
    m[[0, 1, 5]] = True
    assert bpf.first_fit(m, 3) == 2
    assert bpf.first_fit(m, 4) == 6
    assert bpf.first_fit(m, 11) == -1


class _Const:
    def __init__(self, v):
        self.v = v

    def one(self, rng):
        return self.v


# -- the kernel image's boot-time CPA calls (dmsim/gen/kernel_calls.py) ------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KC_2G = os.path.join(SCENARIO_DIR, "data", "kernel-boot-qemu-2g.trace")
KC_8G = os.path.join(SCENARIO_DIR, "data", "kernel-boot-qemu-8g.trace")
DIRECTMAP = ("DirectMap4k", "DirectMap2M", "DirectMap1G")
LEAF_KB = 2048  # a 2M leaf split to 4K moves 2048 kB from DirectMap2M to DirectMap4k


def _directmap(text: bytes, until_running: bool = True) -> tuple[int, ...]:
    """DirectMap4k/2M/1G (kB) after replaying a native trace, up to system_running."""
    from dmsim.simulate import counter_value, simulate
    from dmsim.trace.native import parse_native

    if until_running:
        text = text[:text.index(b"\nsystem_running\n") + len(b"\nsystem_running\n")]
    r = simulate(parse_native(text, "t"))
    return tuple(counter_value(r.counters, c) for c in DIRECTMAP)


def test_kernel_calls_files_are_what_the_script_extracts(monkeypatch):
    """Each data file is reproducible: its header names the recording and the command."""
    from dmsim.gen.kernel_calls import extract

    monkeypatch.chdir(ROOT)
    for path in (KC_2G, KC_8G):
        with open(path) as f:
            shipped = f.read()
        head = dict(ln[2:].split(": ", 1) for ln in shipped.splitlines()
                    if ln.startswith(("# source: ", "# made by: ")))
        source = head["source"].split(" (sha256 ")[0]
        assert extract(source, head["made by"]) == shipped, path


def test_generated_boot_has_the_recorded_kernels_directmap_at_system_running(tmp_path):
    """traces/real/vm2g-boot.trace.gz reports DirectMap4k/2M/1G 28532/2068480/0 kB after
    boot (as does every 2 GiB recording). Without the generator's boot BPF pack, the
    generated boot replays to exactly that minus four 2M leaves split to 4K: the three
    the recorded boots' BPF pack split (the replay residual, tests/test_real_traces.py)
    and the one the recorder's own kprobe trampoline split (kernel_calls.py leaves it
    out). With the pack, the pack's own splits come on top. Before the kernel image's
    calls were generated the same boot replayed to 3956/2093056/0."""
    from dmsim.load import load_trace

    real = load_trace(os.path.join(ROOT, "traces", "real", "vm2g-boot.trace.gz"))
    kernel = tuple(next(c.value for c in real.checkpoints if c.counter == n) for n in DIRECTMAP)
    assert kernel == (28532, 2068480, 0)
    nopack = scenario_file(tmp_path, "include: BASE\nboot: {bpf_boot_pack: false}\n")
    got = _directmap(text(nopack))
    assert got == (kernel[0] - 4 * LEAF_KB, kernel[1] + 4 * LEAF_KB, 0) == (20340, 2076672, 0)
    with open(KC_2G, "rb") as f:
        assert _directmap(f.read()) == got  # the data file replayed on its own
    with_pack = _directmap(text("boot"))
    k = (with_pack[0] - got[0]) // LEAF_KB
    assert with_pack == (got[0] + k * LEAF_KB, got[1] - k * LEAF_KB, 0) and 1 <= k <= 8


def test_kernel_calls_are_written_verbatim_around_boot():
    """start_kernel()'s calls before every other event, the rest (kernel_ro among them,
    where the recording has it) right before system_running, nothing else added."""
    from dmsim.gen.kernel_calls import load

    kc = load(KC_2G)
    t = text("boot").decode()
    body = t[t.index("\ncpa ") + 1:]
    assert body.startswith(kc.early)
    assert body[len(kc.early):].startswith("page_alloc ")
    assert kc.late + "system_running\n" in body
    assert body.count("kernel_ro\n") == 1 and "kernel_ro\n" in kc.late
    late = kc.late.splitlines()
    ro = late.index("kernel_ro")
    assert late[ro - 1].startswith("cpa direct ") and late[ro - 1].endswith(" 512 set=0x0 clr=0x2")
    assert late[ro + 1].startswith("cpa highmap ") and "set=0x8000000000000000" in late[ro + 1]
    assert sum(ln.startswith("cpa ") for ln in t.splitlines()) + 1 == kc.events
    assert "\n# kernel boot calls: configs/scenarios/data/kernel-boot-qemu-2g.trace (2039 events)\n" in t


def test_kernel_calls_for_another_machine_are_not_written_and_that_is_said(tmp_path, capsys):
    path = scenario_file(tmp_path, "include: BASE\nmachine: qemu-2g\n")  # no kernel image
    t = text(path).decode()
    err = capsys.readouterr().err
    assert "warning: kernel boot calls: none written, no data file is for this machine" in err
    assert "the machine has no kernel image" in err
    assert "\n# kernel boot calls: none written, no data file is for this machine" in t
    assert "\ncpa " not in t
    assert "\nkernel_ro\nsystem_running\n" in t  # the bare kernel_ro, as before
    quiet = scenario_file(tmp_path, "include: BASE\nboot: {kernel_calls: []}\n", "q.yaml")
    t = text(quiet).decode()
    assert capsys.readouterr().err == ""
    assert "\n# kernel boot calls: none (boot.kernel_calls is empty)\n" in t and "\ncpa " not in t


def test_kernel_calls_pick_the_file_of_the_machine():
    """The 8 GiB file (vm8g-boot's kernel placement) for an 8 GiB qemu machine with that
    kernel; a kernel moved by 2M matches neither."""
    import dataclasses

    from dmsim.gen.kernel_calls import choose, default_paths, load
    from dmsim.machine_config import machine_from_dict

    k = load(KC_8G).machine.kernel
    m = machine_from_dict({"ram": "8G", "kernel": dataclasses.asdict(k)}, "m")
    kc, note = choose(m, default_paths())
    assert kc is not None and kc.path.endswith("kernel-boot-qemu-8g.trace"), note
    moved = dataclasses.replace(k, phys_base=k.phys_base + (2 << 20))
    m2 = machine_from_dict({"ram": "8G", "kernel": dataclasses.asdict(moved)}, "m")
    kc, note = choose(m2, default_paths())
    assert kc is None and "its kernel image bounds (`kernel:`) differ" in note


def test_bad_kernel_calls_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.trace"
    bad.write_text("dmsim-trace 1\ne820 0x0 0x80000000 usable\ncpa direct 0x1 1 set=0x0 clr=0x2\n")
    path = scenario_file(tmp_path, f"include: BASE\nboot: {{kernel_calls: [{bad}]}}\n")
    with pytest.raises(ScenarioError, match=r"boot\.kernel_calls: not a kernel boot calls file"):
        build(load_scenario(path), 1, SMALL)
    path = scenario_file(tmp_path, "include: BASE\nboot: {kernel_calls: [nothere.trace]}\n", "n.yaml")
    with pytest.raises(ScenarioError, match=r"boot\.kernel_calls: cannot read"):
        build(load_scenario(path), 1, SMALL)


def test_kernel_calls_headers_against_the_kernel_and_the_reference_model():
    """The numbers each data file's header states, checked without the code that wrote
    them: the kernel's own line against the recording's raw `dmsim: meminfo` lines,
    the file's own replay against the pure-Python reference model (dmsim/reference/)."""
    import gzip
    import re

    from dmsim.reference.placement import ReferencePlacement
    from dmsim.trace.native import parse_native

    for path in (KC_2G, KC_8G):
        with open(path) as f:
            shipped = f.read()
        stated = {m.group(1): tuple(int(v) for v in m.group(2).split(" / "))
                  for m in re.finditer(r"^#   (replay of this file|the kernel's own)\D*?"
                                       r"(\d+ / \d+ / \d+) kB", shipped, re.M)}
        source = re.search(r"^# source: (\S+)", shipped, re.M).group(1)
        with open(os.path.join(ROOT, source), "rb") as f:
            raw = gzip.decompress(f.read())
        kernel = {}
        for name, kb in re.findall(rb"dmsim: meminfo (DirectMap\w+): +(\d+) kB", raw):
            kernel.setdefault(name.decode(), int(kb))
        assert stated["the kernel's own"] == tuple(kernel[c] for c in DIRECTMAP), path
        t = parse_native(shipped, path)
        ref = ReferencePlacement(t.machine).run(t)
        c = ref.counters()
        assert c["SYSTEM_RUNNING"] == 1 and shipped.endswith("\nsystem_running\n")
        assert stated["replay of this file"] == (
            4 * c["NR_DIRECT_4K"], 2048 * c["NR_DIRECT_2M"], (1 << 20) * c["NR_DIRECT_1G"]), path
