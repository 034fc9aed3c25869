/* bpfload: load N small BPF socket-filter programs through the raw bpf() syscall.
 * The kernel JITs them (Debian: CONFIG_BPF_JIT_ALWAYS_ON), which on 5.18+ places
 * them in bpf_prog_pack 2 MiB packs (set_memory_ro/x on the pack -> CPA).
 *
 * usage: bpfload N [INSNS [HOLD_SECONDS]]
 *   N            number of programs (kept loaded until all are loaded)
 *   INSNS        instructions per program (default 64, >= 2)
 *   HOLD_SECONDS keep them loaded this long before exiting (default 0)
 * Static, no libbpf: built for the dmsim recording initramfs. */
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int prog_load(const struct bpf_insn *insns, unsigned n, char *log, unsigned logsz)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a.insns = (uint64_t)(uintptr_t)insns;
    a.insn_cnt = n;
    a.license = (uint64_t)(uintptr_t)"GPL";
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = logsz;
    a.log_level = log ? 1 : 0;
    return (int)syscall(__NR_bpf, BPF_PROG_LOAD, &a, sizeof(a));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [INSNS [HOLD_SECONDS]]\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    long ni = argc > 2 ? atol(argv[2]) : 64;
    long hold = argc > 3 ? atol(argv[3]) : 0;
    if (n < 0 || ni < 2 || ni > 4096) {
        fprintf(stderr, "bpfload: bad arguments\n");
        return 2;
    }
    struct bpf_insn *p = calloc((size_t)ni, sizeof(*p));
    int *fds = calloc((size_t)(n ? n : 1), sizeof(int));
    if (!p || !fds)
        return 1;
    /* r0 = i (mov64 imm) repeated, then exit: distinct programs, trivially verified. */
    for (long i = 0; i < ni - 1; i++) {
        p[i].code = BPF_ALU64 | BPF_MOV | BPF_K;
        p[i].dst_reg = BPF_REG_0;
        p[i].imm = (int32_t)i;
    }
    p[ni - 1].code = BPF_JMP | BPF_EXIT;
    long ok = 0;
    for (long k = 0; k < n; k++) {
        p[0].imm = (int32_t)k;
        fds[k] = prog_load(p, (unsigned)ni, NULL, 0);
        if (fds[k] < 0) {
            static char log[65536];
            int e = errno;
            prog_load(p, (unsigned)ni, log, sizeof(log));
            fprintf(stderr, "bpfload: program %ld: %s\n%s\n", k, strerror(e), log);
            break;
        }
        ok++;
    }
    printf("bpfload: loaded %ld/%ld programs of %ld insns\n", ok, n, ni);
    if (hold > 0)
        sleep((unsigned)hold);
    for (long k = 0; k < ok; k++)
        close(fds[k]);
    return ok == n ? 0 : 1;
}
