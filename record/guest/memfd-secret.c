/* memfd-secret: map N pages of memfd_secret(2) memory, touch each, then free them.
 * Each page is an order-0 allocation removed from the direct map
 * (set_direct_map_invalid_noflush) and restored when freed.
 *
 * usage: memfd-secret N [HOLD_SECONDS]
 * Linux 6.1 needs secretmem.enable=1 on the kernel command line. The mapping counts
 * against RLIMIT_MEMLOCK (touching past it raises SIGBUS), so the limit is raised
 * first (needs root or a large enough hard limit). Static build for the initramfs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_memfd_secret
#define __NR_memfd_secret 447
#endif

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N_PAGES [HOLD_SECONDS]\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    long hold = argc > 2 ? atol(argv[2]) : 0;
    long ps = sysconf(_SC_PAGESIZE);
    if (n <= 0)
        return 2;
    struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
    if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
        getrlimit(RLIMIT_MEMLOCK, &rl);
        if (rl.rlim_cur != RLIM_INFINITY && (unsigned long)n * ps > rl.rlim_cur)
            fprintf(stderr, "memfd-secret: warning: RLIMIT_MEMLOCK %lu < %ld bytes: expect SIGBUS\n",
                    (unsigned long)rl.rlim_cur, n * ps);
    }
    int fd = (int)syscall(__NR_memfd_secret, 0);
    if (fd < 0) {
        fprintf(stderr, "memfd-secret: memfd_secret: %s (6.1 needs secretmem.enable=1)\n", strerror(errno));
        return 1;
    }
    if (ftruncate(fd, n * ps) != 0) {
        fprintf(stderr, "memfd-secret: ftruncate: %s\n", strerror(errno));
        return 1;
    }
    char *m = mmap(NULL, (size_t)(n * ps), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "memfd-secret: mmap: %s\n", strerror(errno));
        return 1;
    }
    for (long i = 0; i < n; i++)
        m[i * ps] = (char)i;
    printf("memfd-secret: touched %ld pages\n", n);
    if (hold > 0)
        sleep((unsigned)hold);
    munmap(m, (size_t)(n * ps));
    close(fd);
    return 0;
}
