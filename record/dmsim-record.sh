#!/bin/sh
# dmsim-record.sh - record a dmsim "real trace" on a live Linux (x86-64) machine.
#
# POSIX sh (runs under busybox sh); needs no Python on the target. Run as root.
# The output follows the recording contract of SPEC.md section 6: the kernel's e820
# lines, a line "=== TRACE", then the ftrace buffer (kmem page events, the dmsim/cpa
# kprobe on __change_page_attr_set_clr, and "dmsim: ..." trace_marker checkpoints),
# gzip-compressed. See record/README.md.

PROG=dmsim-record.sh
KPROBE_NAME='dmsim/cpa'
KPROBE_FUNC='__change_page_attr_set_clr'
KPROBE_ARGS='vaddr=+0(+0(%di)):x64 numpages=+32(%di):u64 set=+16(%di):x64 clr=+24(%di):x64 flags=+56(%di):u32 primary=%si:s32 pob=@page_offset_base:x64 pb=@phys_base:x64'
KPROBE_DEF="p:$KPROBE_NAME $KPROBE_FUNC $KPROBE_ARGS"
TRACE_EVENTS='kmem:mm_page_alloc kmem:mm_page_free kmem:mm_page_free_batched'
# Section symbols of the kernel image, in the order they are written.
KSYMS='_text _etext __start_rodata __end_rodata __end_rodata_hpage_align __end_rodata_aligned _sdata _edata __bss_start __bss_stop __brk_base __brk_limit _end __init_begin __init_end idt_table __smp_locks __smp_locks_end'

usage() {
    cat <<EOF
Usage: $PROG [options] -o OUTPUT.trace.gz [STEP ...]
       $PROG --cmdline [-b SIZE_KB]
       $PROG --check

Records a dmsim real trace (SPEC.md section 6) on this running kernel.

A STEP is NAME=COMMAND (split at the first '='; COMMAND runs with sh -c), e.g.
  mod:xfs='modprobe xfs'   rmmod:xfs='rmmod xfs'   secret:64='memfd-secret 64'
Before each step "dmsim: step NAME" is written to trace_marker; after it a
checkpoint: "dmsim: vmstat direct_map_level2_splits N" (and level3), then
"dmsim: meminfo DirectMap4k: N kB" (and 2M, 1G). One checkpoint is also written
before the first step, and "dmsim: end" after the last.

Modes:
  (default)          set up tracing, run the steps, write OUTPUT
  --cmdline          print the kernel command-line parameters that start the same
                     tracing at boot (so boot-time CPA calls are recorded), then exit
  --check            only check the preconditions, then exit

Options:
  -o, --output FILE  gzip-compressed output file ('-' for stdout)
  -s, --step NAME CMD
                     add a step (same as the argument NAME=CMD)
  -f, --steps-file FILE
                     add steps from FILE: one per line, "NAME COMMAND..."
                     (first word is the name); blank lines and '#' lines skipped
  -b, --buffer-kb KB ring-buffer size per CPU in KiB (default 65536 = 64M;
                     64-96M per CPU is known to work for boot tracing)
  --from-boot        tracing was started from the kernel command line (see
                     --cmdline): keep the buffer and its size, do not clear it;
                     only add/enable what is missing
  --mark-running     write "dmsim: system_running" first (when this script is
                     the first thing the booted system runs; on a live machine
                     the system is running anyway, and the flag is implied
                     unless --from-boot is given)
  --no-mark-running  never write "dmsim: system_running"
  --e820-file FILE   take the e820 lines from FILE instead of dmesg
  --keep-tracing     leave the events and the kprobe enabled at the end
                     (default: disable them and remove the kprobe, unless
                     --from-boot)
  -q, --quiet        less chatter on stderr
  -h, --help         this help

Preconditions (checked): root; tracefs at /sys/kernel/tracing (mounted if
needed); kprobe_events; $KPROBE_FUNC in /proc/kallsyms.

Examples:
  $PROG -o /tmp/live.trace.gz 'mod:xfs=modprobe xfs' 'rmmod:xfs=rmmod xfs'
  $PROG --cmdline            # add the output to the boot command line, reboot,
  $PROG --from-boot --mark-running -f steps.txt -o boot.trace.gz   # e.g. from init
EOF
}

QUIET=0
log() { [ "$QUIET" = 1 ] || echo "$PROG: $*" >&2; }
warn() { echo "$PROG: WARNING: $*" >&2; }
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }

OUT=
BUF_KB=65536
MODE=record
FROM_BOOT=0
MARK_RUNNING=auto
E820_FILE=
KEEP=0
NSTEPS=0
# Steps are stored in numbered variables STEP_NAME_i / STEP_CMD_i (no arrays in POSIX sh).
add_step() {
    NSTEPS=$((NSTEPS + 1))
    eval "STEP_NAME_$NSTEPS=\$1"
    eval "STEP_CMD_$NSTEPS=\$2"
}

while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        -o|--output) [ $# -ge 2 ] || die "$1 needs an argument"; OUT=$2; shift 2 ;;
        -s|--step) [ $# -ge 3 ] || die "$1 needs NAME and COMMAND"; add_step "$2" "$3"; shift 3 ;;
        -f|--steps-file)
            [ $# -ge 2 ] || die "$1 needs an argument"
            [ -r "$2" ] || die "cannot read steps file $2"
            while IFS= read -r line || [ -n "$line" ]; do
                case $line in ''|'#'*) continue ;; esac
                name=${line%%[ 	]*}
                cmd=${line#"$name"}
                cmd=${cmd#"${cmd%%[! 	]*}"}
                [ -n "$cmd" ] || die "step '$name' in $2 has no command"
                add_step "$name" "$cmd"
            done < "$2"
            shift 2 ;;
        -b|--buffer-kb) [ $# -ge 2 ] || die "$1 needs an argument"; BUF_KB=$2; shift 2
            case $BUF_KB in ''|*[!0-9]*) die "--buffer-kb takes a number of KiB" ;; esac ;;
        --cmdline) MODE=cmdline; shift ;;
        --check) MODE=check; shift ;;
        --from-boot) FROM_BOOT=1; shift ;;
        --mark-running) MARK_RUNNING=1; shift ;;
        --no-mark-running) MARK_RUNNING=0; shift ;;
        --e820-file) [ $# -ge 2 ] || die "$1 needs an argument"; E820_FILE=$2; shift 2 ;;
        --keep-tracing) KEEP=1; shift ;;
        -q|--quiet) QUIET=1; shift ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
for arg in "$@"; do
    case $arg in
        *=*) add_step "${arg%%=*}" "${arg#*=}" ;;
        *) die "step '$arg' is not NAME=COMMAND" ;;
    esac
done

if [ "$MODE" = cmdline ]; then
    # Spaces become commas on the kernel command line.
    kp=$(echo "$KPROBE_DEF" | tr ' ' ',')
    ev=$(echo "$TRACE_EVENTS" | tr ' ' ',')
    echo "trace_buf_size=$((BUF_KB / 1024))M trace_event=$ev kprobe_event=$kp"
    exit 0
fi

# ---------------------------------------------------------------- preconditions
[ "$(id -u 2>/dev/null)" = 0 ] || die "must run as root (tracefs and kprobes need it)"
[ -r /proc/kallsyms ] || die "/proc/kallsyms not readable (is /proc mounted?)"

T=
for d in /sys/kernel/tracing /sys/kernel/debug/tracing; do
    if [ -e "$d/trace" ]; then T=$d; break; fi
done
if [ -z "$T" ]; then
    [ -d /sys/kernel ] || die "/sys is not mounted (mount -t sysfs sysfs /sys)"
    log "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null ||
        die "tracefs is not mounted and could not be mounted at /sys/kernel/tracing (kernel without CONFIG_FTRACE?)"
    [ -e /sys/kernel/tracing/trace ] || die "tracefs mounted but /sys/kernel/tracing/trace is missing"
    T=/sys/kernel/tracing
fi
[ -e "$T/kprobe_events" ] || die "$T/kprobe_events missing: kernel without CONFIG_KPROBE_EVENTS"
[ -e "$T/trace_marker" ] || die "$T/trace_marker missing"
for ev in $TRACE_EVENTS; do
    [ -d "$T/events/${ev%%:*}/${ev#*:}" ] || die "tracepoint $ev missing from $T/events"
done
grep -q " $KPROBE_FUNC\$" /proc/kallsyms ||
    die "$KPROBE_FUNC not in /proc/kallsyms (inlined or renamed in this kernel?): cannot probe CPA"
if grep -q '^0000000000000000 [Tt] _text$' /proc/kallsyms; then
    warn "/proc/kallsyms shows zero addresses (kernel.kptr_restrict=$(cat /proc/sys/kernel/kptr_restrict 2>/dev/null)); the kallsyms checkpoints will be useless: sysctl kernel.kptr_restrict=1"
fi
if [ "$MODE" = check ]; then
    echo "$PROG: preconditions OK (tracefs at $T)"
    exit 0
fi
[ -n "$OUT" ] || die "no output file given (-o FILE, or -o - for stdout); see --help"
if [ "$OUT" != - ]; then
    : > "$OUT" 2>/dev/null || die "cannot write $OUT"
fi
[ "$MARK_RUNNING" = auto ] && { [ "$FROM_BOOT" = 1 ] && MARK_RUNNING=0 || MARK_RUNNING=1; }

# ---------------------------------------------------------------- helpers
mark() { echo "dmsim: $*" > "$T/trace_marker"; }

checkpoint() {
    # The kernel's counters are read some time after the marker that reports
    # them is ordered in the buffer, and other tasks (kworkers freeing module
    # memory) can change the direct map in between. So: mark "sample", read
    # vmstat (absent before ~5.13) and DirectMap* from meminfo, then mark the
    # values; the kernel's values were taken somewhere inside that window.
    mark "sample"
    vm=$(cat /proc/vmstat)
    mi=$(grep '^DirectMap' /proc/meminfo)
    for c in direct_map_level2_splits direct_map_level3_splits; do
        v=$(echo "$vm" | awk -v k="$c" '$1 == k { print $2 }')
        [ -n "$v" ] && mark "vmstat $c $v"
    done
    echo "$mi" | while read -r key val unit; do
        mark "meminfo $key $val $unit"
    done
}

kprobe_defined() { grep -q "^p:$KPROBE_NAME " "$T/kprobe_events"; }

enable_sources() {
    for ev in $TRACE_EVENTS; do
        echo 1 > "$T/events/${ev%%:*}/${ev#*:}/enable" || die "cannot enable $ev"
    done
    if ! kprobe_defined; then
        echo "$KPROBE_DEF" >> "$T/kprobe_events" || die "cannot define kprobe: $KPROBE_DEF"
    fi
    if [ -e "$T/events/$KPROBE_NAME/enable" ]; then
        echo 1 > "$T/events/$KPROBE_NAME/enable" || die "cannot enable kprobe $KPROBE_NAME"
    elif grep -q "^${KPROBE_NAME%%/*}:${KPROBE_NAME#*/}\$" "$T/set_event"; then
        # A kprobe_event= from the command line is registered and enabled before
        # tracefs has its events/ directory (seen on 6.1): it records all the same.
        log "kprobe $KPROBE_NAME enabled from boot (no events/ directory for it)"
    else
        echo "${KPROBE_NAME%%/*}:${KPROBE_NAME#*/}" >> "$T/set_event" 2>/dev/null ||
            die "cannot enable kprobe $KPROBE_NAME (no $T/events/$KPROBE_NAME)"
    fi
}

disable_sources() {
    for ev in $TRACE_EVENTS; do
        echo 0 > "$T/events/${ev%%:*}/${ev#*:}/enable" 2>/dev/null
    done
    if kprobe_defined; then
        echo 0 > "$T/events/$KPROBE_NAME/enable" 2>/dev/null
        echo "-:$KPROBE_NAME" >> "$T/kprobe_events" 2>/dev/null
    fi
}

e820_lines() {
    if [ -n "$E820_FILE" ]; then
        grep -e 'BIOS-e820:' -e 'e820: update' -e 'e820: remove' "$E820_FILE"
        return
    fi
    lines=$(dmesg 2>/dev/null | grep -e 'BIOS-e820:' -e 'e820: update' -e 'e820: remove')
    if [ -n "$lines" ]; then
        echo "$lines"
        return
    fi
    # The kernel log has wrapped: rebuild the firmware map from /sys/firmware/memmap.
    warn "no e820 lines in dmesg (log wrapped?); using /sys/firmware/memmap (no e820 update/remove lines)"
    [ -d /sys/firmware/memmap ] || { warn "no /sys/firmware/memmap either: output has no e820 lines"; return; }
    for d in /sys/firmware/memmap/*; do
        echo "$(cat "$d/start") $(cat "$d/end") $(cat "$d/type")"
    done | sort | while read -r s e ty; do
        case $ty in
            'System RAM') ty=usable ;;
            Reserved) ty=reserved ;;
            'ACPI Tables') ty='ACPI data' ;;
            'ACPI Non-volatile Storage') ty='ACPI NVS' ;;
            'Unusable memory') ty=unusable ;;
            'Persistent Memory'*) ty='persistent (type 7)' ;;
            *) ty=$(echo "$ty" | tr 'A-Z' 'a-z') ;;
        esac
        printf '[    0.000000] BIOS-e820: [mem 0x%016x-0x%016x] %s\n' "$s" "$e" "$ty"
    done
}

# ---------------------------------------------------------------- set up tracing
if [ "$FROM_BOOT" = 1 ]; then
    on=$(cat "$T/tracing_on")
    [ "$on" = 1 ] || warn "tracing_on is $on: tracing did not start at boot? (turning it on; boot events are missing)"
    for ev in $TRACE_EVENTS; do
        [ "$(cat "$T/events/${ev%%:*}/${ev#*:}/enable")" = 1 ] || warn "$ev was not enabled at boot (see --cmdline)"
    done
    kprobe_defined || warn "kprobe $KPROBE_NAME was not defined at boot (see --cmdline)"
    enable_sources
    echo 1 > "$T/tracing_on"
    log "tracing from boot: buffer $(cat "$T/buffer_size_kb") KiB per CPU"
else
    echo 0 > "$T/tracing_on"
    disable_sources
    echo nop > "$T/current_tracer"
    echo "$BUF_KB" > "$T/buffer_size_kb" || die "cannot set buffer_size_kb to $BUF_KB"
    ncpu=$(grep -c '^processor' /proc/cpuinfo)
    log "buffer $BUF_KB KiB per CPU x $ncpu CPUs"
    : > "$T/trace"
    enable_sources
    echo 1 > "$T/tracing_on"
fi

# ---------------------------------------------------------------- checkpoints and steps
[ "$MARK_RUNNING" = 1 ] && mark system_running
mark "uname $(uname -r)"   # which kernel wrote this (the readers ignore it)
# One pass over kallsyms (it is large; grep per symbol is slow under emulation).
awk -v want="$KSYMS" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) need[w[i]] = 1 }
    NF == 3 && ($3 in need) && !($3 in got) { got[$3] = $1 }
    END { for (i = 1; i <= n; i++) if (w[i] in got) print w[i], got[w[i]] }
' /proc/kallsyms | while read -r sym addr; do
    mark "kallsyms $sym 0x$addr"
done
checkpoint

FAILED=0
i=1
while [ "$i" -le "$NSTEPS" ]; do
    eval "name=\$STEP_NAME_$i; cmd=\$STEP_CMD_$i"
    log "step $i/$NSTEPS: $name: $cmd"
    mark "step $name"
    sh -c "$cmd"
    rc=$?
    if [ "$rc" != 0 ]; then
        warn "step $name exited with status $rc"
        FAILED=$((FAILED + 1))
    fi
    checkpoint
    i=$((i + 1))
done
mark end

# ---------------------------------------------------------------- collect
echo 0 > "$T/tracing_on"   # or reading the buffer keeps filling it
hdr=$(head -n 5 "$T/trace" | sed -n 's|^# entries-in-buffer/entries-written: \([0-9]*\)/\([0-9]*\).*|\1 \2|p')
set -- $hdr
if [ $# -eq 2 ]; then
    if [ "$1" -lt "$2" ]; then
        warn "ring buffer overflowed: $1 of $2 entries kept (oldest lost): replay cannot be exact; use a larger buffer (-b, or trace_buf_size=)"
        OVERFLOW=1
    else
        log "buffer: $1/$2 entries, no overflow"
        OVERFLOW=0
    fi
else
    warn "could not read the entries-in-buffer/entries-written header"
    OVERFLOW=1
fi

write_output() {
    e820_lines
    echo '=== TRACE'
    cat "$T/trace"
}
if [ "$OUT" = - ]; then
    write_output | gzip -c
else
    write_output | gzip -c > "$OUT" || die "writing $OUT failed"
    log "wrote $OUT ($(wc -c < "$OUT") bytes gzipped)"
fi

if [ "$FROM_BOOT" = 0 ] && [ "$KEEP" = 0 ]; then
    disable_sources
    : > "$T/trace"
fi
[ "$FAILED" = 0 ] || warn "$FAILED step(s) failed"
[ "$OVERFLOW" = 0 ] || exit 3
[ "$FAILED" = 0 ] || exit 2
exit 0
