/* The yardstick for dmsim's ftrace ingest: a plain C scan of the same file.
 *
 * Reads an uncompressed ftrace text trace in 4 MiB chunks (as dmsim's reader does),
 * finds each line's `<timestamp>: <event>:` and, for the three event kinds dmsim
 * replays, parses their numbers: mm_page_alloc / mm_page_free / mm_page_free_batched
 * pfn= and order=, the dmsim/cpa kprobe's vaddr= and numpages=. Nothing else (no
 * checks, no e820, no markers): the speed a hand-written parser reaches, to put
 * dmsim's figure beside (bench/run.py prints both and the ratio).
 *
 * usage: ftrace_scan FILE   prints `lines kmem cpa seconds cpu_seconds checksum`
 * (seconds: wall clock, reading included; cpu_seconds: this process's CPU time)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK (4u << 20)

static uint64_t number(const char *p, const char *end)
{
	uint64_t v = 0;
	if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		for (p += 2; p < end; p++) {
			unsigned c = (unsigned char)*p, d;
			if (c - '0' < 10)
				d = c - '0';
			else if ((c | 0x20) - 'a' < 6)
				d = (c | 0x20) - 'a' + 10;
			else
				break;
			v = v << 4 | d;
		}
		return v;
	}
	for (; p < end && (unsigned)(*p - '0') < 10; p++)
		v = v * 10 + (uint64_t)(*p - '0');
	return v;
}

/* the value of `key` (e.g. "pfn=") in [p, end), 0 if absent */
static uint64_t field(const char *p, const char *end, const char *key, size_t klen)
{
	const char *k = memmem(p, (size_t)(end - p), key, klen);
	return k ? number(k + klen, end) : 0;
}

static uint64_t lines, kmem, cpa, checksum;

static void scan_line(const char *s, const char *e)
{
	/* the event is after "<digits>.<digits>: " */
	const char *p = s;
	for (;;) {
		p = memchr(p, ':', (size_t)(e - p));
		if (!p || p + 1 >= e)
			return;
		if (p[1] == ' ' && p > s && (unsigned)(p[-1] - '0') < 10)
			break;
		p++;
	}
	const char *name = p + 2;
	const char *ne = memchr(name, ':', (size_t)(e - name));
	if (!ne)
		return;
	size_t n = (size_t)(ne - name);
	if ((n == 13 && !memcmp(name, "mm_page_alloc", 13)) ||
	    (n == 12 && !memcmp(name, "mm_page_free", 12)) ||
	    (n == 20 && !memcmp(name, "mm_page_free_batched", 20))) {
		kmem++;
		checksum += field(ne, e, "pfn=", 4) + field(ne, e, "order=", 6);
	} else if ((n == 3 && !memcmp(name, "cpa", 3)) || (n == 9 && !memcmp(name, "dmsim/cpa", 9))) {
		cpa++;
		checksum += field(ne, e, "vaddr=", 6) + field(ne, e, "numpages=", 9);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s FILE\n", argv[0]);
		return 2;
	}
	FILE *f = fopen(argv[1], "rb");
	if (!f) {
		perror(argv[1]);
		return 1;
	}
	char *buf = malloc(2 * CHUNK);
	if (!buf)
		return 1;
	struct timespec t0, t1, c0, c1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	size_t carry = 0;
	for (;;) {
		size_t got = fread(buf + carry, 1, CHUNK, f);
		size_t have = carry + got;
		const char *s = buf, *end = buf + have;
		for (;;) {
			const char *nl = memchr(s, '\n', (size_t)(end - s));
			if (!nl)
				break;
			lines++;
			scan_line(s, nl);
			s = nl + 1;
		}
		carry = (size_t)(end - s);
		if (got == 0) {
			if (carry) {
				lines++;
				scan_line(s, end);
			}
			break;
		}
		if (carry >= CHUNK) {  /* a line longer than a chunk: not a trace line */
			carry = 0;
			continue;
		}
		memmove(buf, s, carry);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	fclose(f);
	double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
	double dc = (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) * 1e-9;
	printf("%llu %llu %llu %.6f %.6f %llu\n", (unsigned long long)lines, (unsigned long long)kmem,
	       (unsigned long long)cpa, dt, dc, (unsigned long long)checksum);
	return 0;
}
