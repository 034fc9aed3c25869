#!/usr/bin/env python3
"""dmsim recording harness: boot a Debian 6.1 kernel under qemu (TCG), trace it from
boot with the contract of SPEC.md section 6, run a scenario's steps through
record/dmsim-record.sh inside the guest, and collect the gzipped trace.

Run through record/harness.sh (it installs the Debian packages this needs).
Scenario files: configs/record/*.yaml (see record/README.md). Work files go to
record/work/ (gitignored); results to traces/real/<name>.trace.gz.
Python stdlib + PyYAML (Debian python3-yaml) only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "record")
WORK = os.path.join(RECORD, "work")
GUEST = os.path.join(RECORD, "guest")
ALWAYS_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic"]
BASE_CMDLINE = "console=ttyS0 loglevel=4 panic=-1 rdinit=/init no5lvl secretmem.enable=1"
MAX_TRACE_BYTES = 1_000_000


def log(msg: str) -> None:
    print(f"harness: {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ------------------------------------------------------------------ scenarios
def load_scenario(path: str) -> dict:
    import yaml  # python3-yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    name = cfg.get("name") or os.path.splitext(os.path.basename(path))[0]
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SystemExit(f"{path}: bad scenario name {name!r}")
    steps = []
    for s in cfg.get("steps") or []:
        if isinstance(s, str):
            steps.append((s, step_command(s, path)))
        elif isinstance(s, dict) and "name" in s:
            steps.append((s["name"], s.get("run") or step_command(s["name"], path)))
        elif isinstance(s, dict) and len(s) == 1:
            (k, v), = s.items()
            steps.append((k, v))
        else:
            raise SystemExit(f"{path}: bad step {s!r}")
    for n, _ in steps:
        if not re.fullmatch(r"\S+", n):
            raise SystemExit(f"{path}: step name {n!r} must have no spaces")
    mem = str(cfg.get("memory", "2G"))
    return {
        "path": path,
        "name": name,
        "description": cfg.get("description", ""),
        "memory": mem,
        "cmdline": str(cfg.get("cmdline", "") or ""),
        "buffer_mb": int(cfg.get("buffer_mb", 64)),
        "timeout": int(cfg.get("timeout", 900)),
        "bpftrace": bool(cfg.get("bpftrace", False)),
        # boot: trace from boot (kernel command line; the published traces); live: boot
        # without it and let dmsim-record.sh set tracing up itself (tests the live path).
        "mode": str(cfg.get("mode", "boot")),
        "max_gz_bytes": int(cfg.get("max_gz_bytes", MAX_TRACE_BYTES)),
        "modules": list(cfg.get("modules") or []),
        # kernel series ("5.10", "6.1") or full version (5.10.0-35-amd64); default: --kver,
        # else the newest 6.1.0-N-amd64
        "kernel": str(cfg["kernel"]) if cfg.get("kernel") else None,
        # publish: false keeps the trace in record/work (e.g. a zoneinfo capture)
        "publish": bool(cfg.get("publish", True)),
        # zoneinfo_out: where (relative to the repository) the log's `zoneinfo` block goes
        "zoneinfo_out": cfg.get("zoneinfo_out"),
        "steps": steps,
    }


def step_command(name: str, where: str) -> str:
    """Commands for the shorthand step names used in the configs and the example traces."""
    kind, _, arg = name.partition(":")
    if kind == "mod" and arg:
        return f"modprobe {arg}"
    if kind == "rmmod" and arg:
        return f"rmmod {arg}"
    if kind == "bpf" and arg:  # bpf:N[:INSNS]
        return "bpfload " + " ".join(arg.split(":"))
    if kind == "secret" and arg:  # secret:N_PAGES
        return f"memfd-secret {arg}"
    if kind == "mount" and arg == "bpftrace":
        return "mount-bpftrace"
    if kind == "sleep" and arg:
        return f"sleep {arg}"
    # fragmenting steps (record/guest/frag.c)
    if kind == "pipes" and re.fullmatch(r"\d+:\d+", arg):  # pipes:N:KIB, held by a daemon
        return "frag pipes " + " ".join(arg.split(":"))
    if kind == "sockets" and re.fullmatch(r"\d+", arg):  # sockets:N pairs, held by a daemon
        return f"frag sockets {arg}"
    if kind == "anon" and re.fullmatch(r"\d+", arg):  # anon:MB touched and freed
        return f"frag anon {arg}"
    if kind == "pagecache" and re.fullmatch(r"\d+", arg):  # pagecache:MB file in tmpfs, kept
        return f"frag pagecache /tmp {arg}"
    if kind == "files" and re.fullmatch(r"\d+(:\d+)?", arg):  # files:N[:BYTES], half deleted
        return "frag files /tmp " + " ".join(arg.split(":"))
    if kind == "hugepages" and re.fullmatch(r"\d+", arg):  # hugepages:N: nr_hugepages = N (2M pages)
        return (f"echo {arg} > /proc/sys/vm/nr_hugepages && n=$(cat /proc/sys/vm/nr_hugepages) && "
                f"echo \"nr_hugepages $n\" && [ \"$n\" = {arg} ]")
    if kind == "unfrag" and not arg:  # kill the pipes/sockets daemons
        return "frag kill"
    if kind == "modcycle" and arg:  # modcycle:a,b,c[:R]: R x (load a b c, rmmod c b a)
        mods, _, reps = arg.partition(":")
        names = [m for m in mods.split(",") if m]
        if names and re.fullmatch(r"\d*", reps):
            one = " && ".join([f"modprobe {m}" for m in names] + [f"rmmod {m}" for m in reversed(names)])
            return " && ".join([one] * int(reps or 1))
    if kind == "zoneinfo" and not arg:  # print zoneinfo, vm sysctls, dmesg e820 to the log
        return "zoneinfo"
    raise SystemExit(f"{where}: step {name!r} has no shorthand; give it as {{name: ..., run: ...}}")


def step_modules(steps) -> list[str]:
    mods = []
    for name, cmd in steps:
        for m in re.findall(r"\bmodprobe\s+([A-Za-z0-9_-]+)", cmd):
            mods.append(m)
    return mods


# ------------------------------------------------------------------ kernel
SERIES_SUITE = {"6.1": "bookworm", "5.10": "bullseye"}  # Debian suite of each kernel series
APT_EXTRA = "/etc/apt/sources.list.d/dmsim-record-extra.sources"


def _series(spec: str) -> str:
    m = re.match(r"(\d+\.\d+)", spec)
    if not m:
        raise SystemExit(f"bad kernel {spec!r}: want a series (6.1, 5.10) or a version (6.1.0-56-amd64)")
    return m.group(1)


def _apt_kernels(series: str) -> list[str]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", rf"^linux-image-{re.escape(series)}\.0-[0-9]+-amd64$"],
        capture_output=True, text=True, check=True,
    ).stdout
    return re.findall(rf"^linux-image-({re.escape(series)}\.0-\d+-amd64)\s", out, re.M)


@contextlib.contextmanager
def extra_suite(suite: str | None):
    """apt knows `suite` inside the block: a sources file on the mirror bookworm uses,
    removed again (and apt-get update run) afterwards. None: nothing to do."""
    if suite is None:
        yield
        return
    uri = "http://deb.debian.org/debian"
    for src in glob.glob("/etc/apt/sources.list.d/*.sources") + ["/etc/apt/sources.list"]:
        if os.path.exists(src) and src != APT_EXTRA:
            m = re.search(r"^URIs:\s*(\S+/debian)\s*$", open(src).read(), re.M) or \
                re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", open(src).read(), re.M)
            if m:
                uri = m.group(1)
                break
    log(f"adding Debian suite {suite} ({uri}) to apt's sources for the kernel download")
    with open(APT_EXTRA, "w") as f:
        f.write(f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    try:
        run(["apt-get", "update", "-q"])
        yield
    finally:
        os.unlink(APT_EXTRA)
        log(f"removed suite {suite} again")
        subprocess.run(["apt-get", "update", "-q"], check=False)


def _cached_kernels(series: str) -> list[str]:
    pat = re.compile(rf"linux-image-({re.escape(series)}\.0-\d+-amd64)_")
    return [m.group(1) for f in os.listdir(WORK) if (m := pat.match(f))] if os.path.isdir(WORK) else []


def _newest(vers: list[str]) -> str:
    return max(vers, key=lambda v: int(v.split("-")[1]))


def pick_kver(requested: str | None) -> str:
    """A full version as given; a series (or None: 6.1) becomes the newest
    linux-image-<series>.0-N-amd64 that apt offers, or that is already downloaded
    when apt does not offer the series (5.10 lives in bullseye)."""
    if requested and re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", requested):
        return requested
    series = _series(requested) if requested else "6.1"
    vers = _apt_kernels(series)
    if vers:
        return _newest(vers)
    cached = _cached_kernels(series)
    if cached:
        return _newest(cached)
    suite = SERIES_SUITE.get(series)
    if suite is None:
        raise SystemExit(f"apt-cache knows no linux-image-{series}.0-N-amd64 (run apt-get update)")
    with extra_suite(suite):
        vers = _apt_kernels(series)
        if not vers:
            raise SystemExit(f"Debian {suite} has no linux-image-{series}.0-N-amd64")
        kver = _newest(vers)
        download_kernel(kver)
    return kver


def download_kernel(kver: str) -> None:
    if not glob.glob(os.path.join(WORK, f"linux-image-{kver}_*.deb")):
        log(f"downloading linux-image-{kver}")
        run(["apt-get", "download", f"linux-image-{kver}"], cwd=WORK)


def get_kernel(kver: str) -> str:
    kdir = os.path.join(WORK, f"kernel-{kver}")
    if os.path.exists(os.path.join(kdir, "lib/modules", kver, "modules.dep")):
        return kdir
    if not glob.glob(os.path.join(WORK, f"linux-image-{kver}_*.deb")):
        if _apt_kernels(_series(kver)):
            download_kernel(kver)
        else:  # a series apt does not offer (5.10: bullseye)
            with extra_suite(SERIES_SUITE.get(_series(kver))):
                download_kernel(kver)
    debs = glob.glob(os.path.join(WORK, f"linux-image-{kver}_*.deb"))
    shutil.rmtree(kdir, ignore_errors=True)
    run(["dpkg", "-x", debs[0], kdir])
    run(["depmod", "-b", kdir, kver])
    return kdir


def module_index(kdir: str, kver: str) -> dict:
    deps = {}
    with open(os.path.join(kdir, "lib/modules", kver, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    byname = {os.path.basename(p)[:-3].replace("-", "_"): p for p in deps}
    return {"deps": deps, "byname": byname}


def module_closure(idx: dict, names) -> list[str]:
    out, todo = set(), []
    for n in names:
        key = n.replace("-", "_")
        if key not in idx["byname"]:
            raise SystemExit(f"module {n} is not in the kernel package")
        todo.append(idx["byname"][key])
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(idx["deps"][p])
    return sorted(out)


# ------------------------------------------------------------------ initramfs
def build_helpers() -> dict:
    bdir = os.path.join(WORK, "bin")
    os.makedirs(bdir, exist_ok=True)
    out = {}
    for name in ("bpfload", "memfd-secret", "frag"):
        src = os.path.join(GUEST, name + ".c")
        dst = os.path.join(bdir, name)
        if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
            run(["gcc", "-static", "-O2", "-Wall", "-o", dst, src])
        out[name] = dst
    return out


def write_cpio(srcdir: str, dst: str) -> None:
    files = subprocess.run(
        "find . -print0 | LC_ALL=C sort -z", shell=True, cwd=srcdir, capture_output=True, check=True
    ).stdout
    with open(dst, "wb") as f:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-0", "-R", "0:0"],
                       input=files, cwd=srcdir, stdout=f, check=True)


@contextlib.contextmanager
def work_lock(name: str):
    """An flock in record/work: harness runs started concurrently share the work dir."""
    with open(os.path.join(WORK, f".{name}.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another harness run ({name} lock)")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_base_initramfs(kdir: str, kver: str, modules) -> str:
    # Keyed by its inputs, so concurrent runs with other scenarios do not clobber it.
    h = hashlib.sha256("\n".join([kver] + sorted(modules)).encode())
    for f in ["dmsim-record.sh", "guest/init", "guest/bpftrace", "guest/mount-bpftrace",
              "guest/bpfload.c", "guest/memfd-secret.c", "guest/frag.c", "guest/zoneinfo"]:
        with open(os.path.join(RECORD, f), "rb") as r:
            h.update(r.read())
    out = os.path.join(WORK, f"initramfs-base-{h.hexdigest()[:12]}.cpio")
    if os.path.exists(out):
        return out
    d = os.path.join(WORK, f"initramfs-base-{h.hexdigest()[:12]}.{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "out", "etc", "run"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    bb = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(bb, os.path.join(d, "bin/busybox"))
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        p = os.path.join(d, "bin", a)
        if not os.path.exists(p):
            os.symlink("busybox", p)
    shutil.copy2(os.path.join(GUEST, "init"), os.path.join(d, "init"))
    shutil.copy2(os.path.join(RECORD, "dmsim-record.sh"), os.path.join(d, "bin/dmsim-record.sh"))
    for name, path in build_helpers().items():
        shutil.copy2(path, os.path.join(d, "bin", name))
    for name in ("bpftrace", "mount-bpftrace", "zoneinfo"):  # wrappers for the bpftrace disk; zoneinfo
        shutil.copy2(os.path.join(GUEST, name), os.path.join(d, "bin", name))
    idx = module_index(kdir, kver)
    paths = module_closure(idx, modules)
    mroot = os.path.join(d, "lib/modules", kver)
    for p in paths:
        os.makedirs(os.path.dirname(os.path.join(mroot, p)), exist_ok=True)
        shutil.copy2(os.path.join(kdir, "lib/modules", kver, p), os.path.join(mroot, p))
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        src = os.path.join(kdir, "lib/modules", kver, f)
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(mroot, f))
    run(["depmod", "-b", d, kver])
    log(f"initramfs: {len(paths)} modules for {len(set(modules))} requested")
    write_cpio(d, out + f".{os.getpid()}")
    os.rename(out + f".{os.getpid()}", out)
    shutil.rmtree(d, ignore_errors=True)
    return out


def build_bpftrace_disk() -> str | None:
    """An ext4 image (read-only second virtio disk) with Debian's bpftrace and every
    shared library it needs. On a disk, not in the initramfs: unpacking ~200 MiB of
    initramfs at boot writes ~100k page events, doubling the trace."""
    bt = shutil.which("bpftrace")
    if not bt:
        log("bpftrace not installed: skipping it")
        return None
    out = os.path.join(WORK, "bpftrace.ext4")
    if os.path.exists(out):
        return out
    d = os.path.join(WORK, "bpftrace-root")
    shutil.rmtree(d, ignore_errors=True)
    files = {os.path.realpath(bt): "/usr/bin/bpftrace"}
    ldd = subprocess.run(["ldd", bt], capture_output=True, text=True, check=True).stdout
    for line in ldd.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            files[os.path.realpath(m.group(1))] = m.group(1)
    for real, dst in files.items():
        tgt = os.path.join(d, dst.lstrip("/"))
        os.makedirs(os.path.dirname(tgt), exist_ok=True)
        shutil.copy2(real, tgt)
    size_mb = int(sum(os.path.getsize(os.path.join(d, f.lstrip("/"))) for f in files.values()) / 2**20 * 1.3) + 32
    tmp = out + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", d, tmp, f"{size_mb}M"])
    os.rename(tmp, out)
    log(f"bpftrace disk: {len(files)} files, {size_mb} MiB")
    return out


def build_scenario_cpio(sc: dict) -> str:
    d = os.path.join(WORK, sc["name"], "initramfs")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "steps.txt"), "w") as f:
        f.write(f"# scenario {sc['name']}: NAME COMMAND, run by dmsim-record.sh -f\n")
        for name, cmd in sc["steps"]:
            f.write(f"{name} {cmd}\n")
    with open(os.path.join(d, "scenario.env"), "w") as f:
        f.write(f"SCENARIO='{sc['name']}'\n")
        args = "--from-boot --mark-running" if sc["mode"] == "boot" else f"-b {sc['buffer_mb'] * 1024}"
        f.write(f"RECORD_ARGS='{args}'\n")
    out = os.path.join(WORK, sc["name"], "scenario.cpio")
    write_cpio(d, out)
    return out


# ------------------------------------------------------------------ run + check
def recorder_cmdline(buffer_mb: int) -> str:
    return subprocess.run(
        ["sh", os.path.join(RECORD, "dmsim-record.sh"), "--cmdline", "-b", str(buffer_mb * 1024)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def run_scenario(sc: dict, kdir: str, kver: str, base_cpio: str, bt_disk: str | None, outdir: str) -> dict:
    if sc["bpftrace"] and not bt_disk:
        raise SystemExit(f"{sc['name']}: needs bpftrace, which is not available")
    sdir = os.path.join(WORK, sc["name"])
    os.makedirs(sdir, exist_ok=True)
    parts = [base_cpio, build_scenario_cpio(sc)]
    initrd = os.path.join(sdir, "initrd.cpio")
    with open(initrd, "wb") as w:
        for p in parts:
            with open(p, "rb") as r:
                shutil.copyfileobj(r, w)
    disk = os.path.join(sdir, "out.img")
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    tracing = recorder_cmdline(sc["buffer_mb"]) if sc["mode"] == "boot" else ""
    cmdline = " ".join(x for x in (BASE_CMDLINE, tracing, sc["cmdline"]) if x)
    console = os.path.join(sdir, "console.log")
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", sc["memory"],
        "-kernel", os.path.join(kdir, "boot", f"vmlinuz-{kver}"), "-initrd", initrd,
        "-append", cmdline, "-drive", f"file={disk},format=raw,if=virtio",
        *(["-drive", f"file={bt_disk},format=raw,if=virtio,readonly=on"] if sc["bpftrace"] else []),
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
        "-no-reboot", "-net", "none",
    ]
    with open(os.path.join(sdir, "qemu.cmd"), "w") as f:
        f.write(" ".join(repr(a) if " " in a else a for a in qemu) + "\n")
    log(f"{sc['name']}: booting ({sc['memory']}, {len(sc['steps'])} steps)")
    with work_lock("qemu"):  # one qemu at a time, across harness runs too
        t0 = time.time()
        try:
            subprocess.run(qemu, check=False, timeout=sc["timeout"], stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{sc['name']}: qemu timed out after {sc['timeout']} s; see {console}")
        took = time.time() - t0
    res = os.path.join(sdir, "result")
    shutil.rmtree(res, ignore_errors=True)
    os.makedirs(res)
    try:
        with tarfile.open(disk) as t:
            t.extractall(res)
    except tarfile.TarError as e:
        raise SystemExit(f"{sc['name']}: no trace on the disk ({e}); see {console}")
    if not os.path.exists(os.path.join(res, "trace.gz")):
        raise SystemExit(f"{sc['name']}: no trace on the disk; see {console}")
    rc = open(os.path.join(res, "rc")).read().strip()
    glog = open(os.path.join(res, "log")).read()
    trace = os.path.join(res, "trace.gz")
    summary = check_trace(trace, sc)
    summary.update(name=sc["name"], memory=sc["memory"], cmdline=sc["cmdline"], seconds=round(took, 1),
                   recorder_rc=rc, kernel=kver)
    if rc != "0":
        summary["problems"].append(f"recorder exit status {rc}: {glog.strip().splitlines()[-3:]}")
    zi = re.search(r"^=== zoneinfo begin\n(.*?)^=== zoneinfo end$", glog, re.S | re.M)
    if zi:
        with open(os.path.join(sdir, "zoneinfo.txt"), "w") as f:
            f.write(zi.group(1))
        if sc["zoneinfo_out"]:
            zdst = os.path.join(ROOT, sc["zoneinfo_out"])
            os.makedirs(os.path.dirname(zdst), exist_ok=True)
            shutil.copy2(os.path.join(sdir, "zoneinfo.txt"), zdst)
            log(f"{sc['name']}: zoneinfo -> {sc['zoneinfo_out']}")
    elif sc["zoneinfo_out"]:
        summary["problems"].append("zoneinfo_out given but the log has no zoneinfo block")
    if summary["problems"] or not sc["publish"]:
        dst = trace  # leave it in record/work: a broken trace is not published
    else:
        os.makedirs(outdir, exist_ok=True)
        dst = os.path.join(outdir, f"{sc['name']}.trace.gz")
        shutil.copy2(trace, dst)
    summary["file"] = os.path.relpath(dst, ROOT)
    summary["gz_bytes"] = os.path.getsize(dst)
    with open(os.path.join(sdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"{sc['name']}: {took:.0f} s, {summary['gz_bytes']} bytes -> {summary['file']}; "
        f"final {summary['final']}; problems: {summary['problems'] or 'none'}")
    return summary


def check_trace(path: str, sc: dict) -> dict:
    problems = []
    e820 = 0
    in_trace = False
    header = None
    markers = []
    with gzip.open(path, "rt", errors="replace") as f:
        for line in f:
            if not in_trace:
                if line.startswith("=== TRACE"):
                    in_trace = True
                elif "BIOS-e820:" in line:
                    e820 += 1
                continue
            if header is None:
                m = re.match(r"# entries-in-buffer/entries-written: (\d+)/(\d+)", line)
                if m:
                    header = (int(m.group(1)), int(m.group(2)))
            i = line.find("dmsim: ")
            if i >= 0 and "tracing_mark_write" in line:
                markers.append(line[i + 7:].rstrip("\n"))
    if e820 == 0:
        problems.append("no BIOS-e820 lines")
    if not in_trace:
        problems.append("no '=== TRACE' line")
    if header is None:
        problems.append("no entries-in-buffer header")
    elif header[0] != header[1]:
        problems.append(f"ring buffer overflow {header[0]}/{header[1]}")
    if "system_running" not in markers:
        problems.append("no 'dmsim: system_running'")
    if not markers or markers[-1] != "end":
        problems.append("no 'dmsim: end' at the end")
    steps = [m[5:] for m in markers if m.startswith("step ")]
    want = [n for n, _ in sc["steps"]] if sc else steps
    if steps != want:
        problems.append(f"step markers {steps} != configured {want}")
    final, first, uname = {}, None, None
    for m in markers:
        if m.startswith("step ") or m == "end":
            if first is None:
                first = dict(final)
        if m.startswith("uname "):
            uname = m[6:]
        elif m.startswith("vmstat "):
            _, k, v = m.split()
            final[k] = int(v)
        elif m.startswith("meminfo "):
            _, k, v, _unit = m.split()
            final[k.rstrip(":")] = int(v)
    ncheck = sum(1 for m in markers if m.startswith("meminfo DirectMap4k"))
    if ncheck != len(want) + 1:
        problems.append(f"{ncheck} checkpoints for {len(want)} steps")
    max_gz = sc["max_gz_bytes"] if sc else float("inf")  # --summarize: size is a column
    if os.path.getsize(path) > max_gz:
        problems.append(f"trace is {os.path.getsize(path)} bytes gzipped (> max_gz_bytes {max_gz})")
    return {"e820_lines": e820, "entries": header, "steps": len(steps), "checkpoints": ncheck, "uname": uname,
            "first": first or {}, "final": final, "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="scenario files (default: configs/record/*.yaml)")
    ap.add_argument("--kver", help="kernel version, e.g. 6.1.0-56-amd64 or 5.10.0-35-amd64, or a series (5.10) "
                    "for scenarios without `kernel:` (default: newest 6.1.0-N-amd64 apt offers)")
    ap.add_argument("--out", default=os.path.join(ROOT, "traces", "real"), help="where traces go")
    ap.add_argument("--only", action="append", help="run only the scenario(s) with this name")
    ap.add_argument("--table", action="store_true", help="only print the table of the last results")
    ap.add_argument("--summarize", nargs="+", metavar="TRACE",
                    help="check recorded trace files and print their first/last checkpoints, then exit")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)

    configs = args.configs or sorted(glob.glob(os.path.join(ROOT, "configs", "record", "*.yaml")))
    scenarios = [load_scenario(p) for p in configs]
    if args.only:
        scenarios = [s for s in scenarios if s["name"] in args.only]
    if not scenarios:
        raise SystemExit("no scenarios")
    if args.table:
        print_table([json.load(open(os.path.join(WORK, s["name"], "summary.json"))) for s in scenarios
                     if os.path.exists(os.path.join(WORK, s["name"], "summary.json"))])
        return 0
    os.makedirs(WORK, exist_ok=True)
    t0 = time.time()
    # scenarios by kernel: a scenario's `kernel:` wins, else --kver, else the newest 6.1
    kvers: dict[str, str] = {}
    by_kver: dict[str, list] = {}
    for s in scenarios:
        spec = s["kernel"] or args.kver
        if spec not in kvers:
            kvers[spec] = pick_kver(spec)
        by_kver.setdefault(kvers[spec], []).append(s)
    results = []
    for kver, group in by_kver.items():
        log(f"kernel {kver}: {', '.join(s['name'] for s in group)}")
        modules = list(ALWAYS_MODULES)
        for s in group:
            modules += s["modules"] + step_modules(s["steps"])
            if s["bpftrace"]:
                modules.append("ext4")
        with work_lock("build"):
            kdir = get_kernel(kver)
            base = build_base_initramfs(kdir, kver, sorted(set(modules)))
            bt = build_bpftrace_disk() if any(s["bpftrace"] for s in group) else None
        for s in group:
            results.append(run_scenario(s, kdir, kver, base, bt, args.out))
    print_table(results)
    bad = [r["name"] for r in results if r["problems"]]
    log(f"total {time.time() - t0:.0f} s for {len(results)} scenario(s); "
        + (f"PROBLEMS in {bad}" if bad else "all traces check out"))
    return 1 if bad else 0


def summarize(paths) -> int:
    """Check trace files (any recorder's) and print a table of their checkpoints."""
    bad = 0
    print("| trace | e820 lines | entries (buffer/written) | steps | boot L2/L3 splits | boot DirectMap4k/2M/1G (kB) "
          "| final L2/L3 splits | final DirectMap4k/2M/1G (kB) | gz bytes | problems |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        r = check_trace(p, None)
        bad += bool(r["problems"])

        def split(d):
            return f"{d.get('direct_map_level2_splits', '-')}/{d.get('direct_map_level3_splits', '-')}"

        def dm(d):
            return "/".join(str(d.get(k, "-")) for k in ("DirectMap4k", "DirectMap2M", "DirectMap1G"))

        ent = "/".join(map(str, r["entries"])) if r["entries"] else "-"
        name = os.path.basename(p).replace(".trace.gz", "")
        print(f"| {name} | {r['e820_lines']} | {ent} | {r['steps']} | {split(r['first'])} | {dm(r['first'])} | "
              f"{split(r['final'])} | {dm(r['final'])} | {os.path.getsize(p)} | {'; '.join(r['problems']) or 'none'} |")
    return 1 if bad else 0


def print_table(results) -> None:
    print("| trace | guest | extra cmdline | steps | level2_splits | level3_splits | DirectMap4k | DirectMap2M | DirectMap1G | gz bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def kb(v):
        return "-" if v is None else f"{v} kB"

    for r in results:
        f = r["final"]
        print(f"| {r['name']} | {r['memory']} | {r['cmdline'] or '-'} | {r['steps']} | "
              f"{f.get('direct_map_level2_splits', '-')} | {f.get('direct_map_level3_splits', '-')} | "
              f"{kb(f.get('DirectMap4k'))} | {kb(f.get('DirectMap2M'))} | {kb(f.get('DirectMap1G'))} | "
              f"{r['gz_bytes']} |")


if __name__ == "__main__":
    sys.exit(main())
