/* frag: fragment a freshly booted machine's memory the way a long-running one is.
 *
 * usage:
 *   frag pipes N KIB         open N pipes, fill each with KIB KiB (order-0 unmovable pages,
 *                            GFP_HIGHUSER | __GFP_ACCOUNT), close every other pipe, and keep
 *                            the rest open in a background daemon (until `frag kill` or
 *                            power-off): unmovable pages scattered over many pageblocks
 *   frag sockets N           N unix socket pairs, 2 KiB queued in each (slab: sock inodes,
 *                            unix_sock, skbuff heads and data), every other pair closed,
 *                            the rest held by a background daemon
 *   frag anon MB             mmap MB MiB anonymous, touch every page, munmap (churn)
 *   frag pagecache DIR MB    write a file of MB MiB in DIR (tmpfs: shmem page cache), read
 *                            it back, keep it
 *   frag files DIR N [BYTES] create N files of BYTES bytes (default 0) in a new directory
 *                            under DIR (dentry, inode slab; a page each in tmpfs when
 *                            BYTES > 0), then delete every other one: partly empty slabs
 *   frag kill                kill the daemons `frag pipes` and `frag sockets` started
 *
 * The daemons are what keep the scatter in place while the recorder runs its next steps
 * (each step is a `sh -c` that must return): the parent returns once the daemon has
 * finished filling and closing, so the step's checkpoint sees the fragmented state.
 * Their pids are appended to /run/frag.pids. Static build for the recording initramfs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIDFILE "/run/frag.pids"

static void die(const char *what)
{
    fprintf(stderr, "frag: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(long need)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((long)rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max = (rlim_t)need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        /* the hard limit caps it without privilege; nr_open caps it with */
        FILE *f = fopen("/proc/sys/fs/nr_open", "w");
        if (f) {
            fprintf(f, "%ld\n", need);
            fclose(f);
        }
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            die("setrlimit(RLIMIT_NOFILE)");
    }
}

/* Fork a daemon that runs work(); return in the parent once it reported "ready". */
static int daemonize(const char *kind, int (*work)(long, long), long a, long b)
{
    int st[2];
    if (pipe(st) != 0)
        die("pipe");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(st[0]);
        setsid();
        int rc = work(a, b);
        char c = rc == 0 ? 'y' : 'n';
        if (write(st[1], &c, 1) != 1)
            _exit(1);
        close(st[1]);
        if (rc != 0)
            _exit(1);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
            if (nul > 2)
                close(nul);
        }
        signal(SIGHUP, SIG_IGN);
        for (;;)
            pause();
    }
    close(st[1]);
    char c = 'n';
    if (read(st[0], &c, 1) != 1 || c != 'y') {
        waitpid(pid, NULL, 0);
        fprintf(stderr, "frag: %s daemon failed\n", kind);
        return 1;
    }
    FILE *f = fopen(PIDFILE, "a");
    if (f) {
        fprintf(f, "%d\n", (int)pid);
        fclose(f);
    }
    printf("frag: %s daemon %d holds them\n", kind, (int)pid);
    return 0;
}

static int pipes_work(long n, long kib)
{
    raise_nofile(2 * n + 64);
    int (*fds)[2] = calloc((size_t)n, sizeof(*fds));
    char buf[4096];
    memset(buf, 0x5a, sizeof(buf));
    if (!fds)
        return 1;
    long bytes = kib * 1024;
    for (long i = 0; i < n; i++) {
        if (pipe2(fds[i], O_NONBLOCK) != 0) {
            fprintf(stderr, "frag: pipe %ld: %s\n", i, strerror(errno));
            return 1;
        }
        if (bytes > 65536 && fcntl(fds[i][1], F_SETPIPE_SZ, (int)bytes) < 0) {
            fprintf(stderr, "frag: F_SETPIPE_SZ %ld: %s\n", bytes, strerror(errno));
            return 1;
        }
        for (long w = 0; w < bytes; w += (long)sizeof(buf)) {
            ssize_t r = write(fds[i][1], buf, sizeof(buf));
            if (r != (ssize_t)sizeof(buf)) {
                fprintf(stderr, "frag: pipe %ld full after %ld bytes\n", i, w);
                return 1;
            }
        }
    }
    for (long i = 1; i < n; i += 2) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
    printf("frag: %ld pipes of %ld KiB, %ld closed\n", n, kib, n / 2);
    fflush(stdout);
    return 0;
}

static int sockets_work(long n, long unused)
{
    (void)unused;
    raise_nofile(2 * n + 64);
    int (*fds)[2] = calloc((size_t)n, sizeof(*fds));
    char buf[2048];
    memset(buf, 0xa5, sizeof(buf));
    if (!fds)
        return 1;
    for (long i = 0; i < n; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds[i]) != 0) {
            fprintf(stderr, "frag: socketpair %ld: %s\n", i, strerror(errno));
            return 1;
        }
        if (write(fds[i][0], buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
            fprintf(stderr, "frag: socket write %ld: %s\n", i, strerror(errno));
            return 1;
        }
    }
    for (long i = 1; i < n; i += 2) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
    printf("frag: %ld socket pairs, %ld closed\n", n, n / 2);
    fflush(stdout);
    return 0;
}

static int anon(long mb)
{
    size_t len = (size_t)mb << 20;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        die("mmap");
    long ps = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < len; i += (size_t)ps)
        m[i] = (char)i;
    munmap(m, len);
    printf("frag: touched and freed %ld MiB anonymous\n", mb);
    return 0;
}

static int pagecache(const char *dir, long mb)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/pagecache.%d", dir, (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die(path);
    static char buf[1 << 16];
    memset(buf, 0x3c, sizeof(buf));
    for (long i = 0; i < (mb << 20); i += (long)sizeof(buf))
        if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
            die("write");
    fsync(fd);
    lseek(fd, 0, SEEK_SET);
    long total = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof(buf))) > 0)
        total += r;
    close(fd);
    printf("frag: wrote and read %ld MiB in %s\n", total >> 20, path);
    return 0;
}

static int files(const char *dir, long n, long bytes)
{
    char d[4096], path[4200];
    snprintf(d, sizeof(d), "%s/files.%d", dir, (int)getpid());
    if (mkdir(d, 0700) != 0)
        die(d);
    char *buf = calloc(1, (size_t)(bytes > 0 ? bytes : 1));
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/f%07ld", d, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0)
            die(path);
        if (bytes > 0 && write(fd, buf, (size_t)bytes) != (ssize_t)bytes)
            die("write");
        close(fd);
    }
    for (long i = 1; i < n; i += 2) {
        snprintf(path, sizeof(path), "%s/f%07ld", d, i);
        if (unlink(path) != 0)
            die(path);
    }
    printf("frag: %ld files of %ld bytes in %s, %ld deleted\n", n, bytes, d, n / 2);
    return 0;
}

static int kill_daemons(void)
{
    FILE *f = fopen(PIDFILE, "r");
    if (!f)
        return 0;
    int pid, n = 0;
    while (fscanf(f, "%d", &pid) == 1) {
        if (kill(pid, SIGKILL) == 0)
            n++;
    }
    fclose(f);
    unlink(PIDFILE);
    printf("frag: killed %d daemon(s)\n", n);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: frag pipes N KIB | sockets N | anon MB | pagecache DIR MB | "
                    "files DIR N [BYTES] | kill\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(cmd, "pipes") && argc == 4 && atol(argv[2]) > 0 && atol(argv[3]) > 0)
        return daemonize("pipes", pipes_work, atol(argv[2]), atol(argv[3]));
    if (!strcmp(cmd, "sockets") && argc == 3 && atol(argv[2]) > 0)
        return daemonize("sockets", sockets_work, atol(argv[2]), 0);
    if (!strcmp(cmd, "anon") && argc == 3 && atol(argv[2]) > 0)
        return anon(atol(argv[2]));
    if (!strcmp(cmd, "pagecache") && argc == 4 && atol(argv[3]) > 0)
        return pagecache(argv[2], atol(argv[3]));
    if (!strcmp(cmd, "files") && (argc == 4 || argc == 5) && atol(argv[3]) > 0)
        return files(argv[2], atol(argv[3]), argc == 5 ? atol(argv[4]) : 0);
    if (!strcmp(cmd, "kill") && argc == 2)
        return kill_daemons();
    usage();
    return 2;
}
