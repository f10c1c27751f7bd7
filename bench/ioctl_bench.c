// SPDX-License-Identifier: GPL-2.0-only
/*
 * ioctl_bench: ioctl round-trip latency and throughput of a character device.
 *
 *   ioctl_bench DEVICE CMD NCALLS NTHREADS
 *
 * Each of NTHREADS threads opens DEVICE itself, makes a few untimed warm-up calls, waits for the
 * others at a barrier, then makes its share of NCALLS ioctl(fd, CMD, 0) calls, timing each one with
 * CLOCK_MONOTONIC. Prints one JSON line on stdout:
 *   {"bench":"ioctl","device":...,"cmd":...,"threads":T,"calls":N,"errors":E,
 *    "calls_per_s":..,"samples":N,"min_us":..,"p50_us":..,"p99_us":..,"max_us":..,"cdf_us":[p0,...,p100]}
 * cdf_us holds the 0th..100th percentiles (101 values) for plotting the distribution.
 * calls_per_s = NCALLS / (wall time from the barrier to the last thread's last call).
 * Exit status: 0 if every call succeeded, 1 if some failed (the first error is printed on stderr),
 * 2 on bad usage or when DEVICE cannot be opened.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

struct worker {
	pthread_t thread;
	int fd;
	unsigned long calls;
	uint64_t *lat_ns;
	unsigned long errors;
	int first_errno;
	uint64_t end_ns;
};

static unsigned long cmd;
static pthread_barrier_t start_barrier;
static uint64_t start_ns;

static void *run(void *p)
{
	struct worker *w = p;
	unsigned long warm = w->calls / 10 < 50 ? w->calls / 10 : 50;

	for (unsigned long i = 0; i < warm; i++)
		(void)ioctl(w->fd, cmd, 0UL);
	if (pthread_barrier_wait(&start_barrier) == PTHREAD_BARRIER_SERIAL_THREAD)
		start_ns = bench_now_ns();
	for (unsigned long i = 0; i < w->calls; i++) {
		uint64_t t0 = bench_now_ns();
		int rc = ioctl(w->fd, cmd, 0UL);
		uint64_t t1 = bench_now_ns();

		w->lat_ns[i] = t1 - t0;
		if (rc < 0) {
			if (!w->errors++)
				w->first_errno = errno;
		}
	}
	w->end_ns = bench_now_ns();
	return NULL;
}

static int parse_ulong(const char *s, unsigned long *out, int base)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, base);
	return errno || end == s || *end || s[0] == '-';
}

int main(int argc, char **argv)
{
	unsigned long ncalls, nthreads, errors = 0, next = 0;
	struct worker *w;
	uint64_t *all, end_ns = 0;
	int first_errno = 0;

	if (argc != 5 || parse_ulong(argv[2], &cmd, 0) || parse_ulong(argv[3], &ncalls, 10) ||
	    parse_ulong(argv[4], &nthreads, 10) || !ncalls || !nthreads || nthreads > 1024 ||
	    ncalls < nthreads) {
		fprintf(stderr, "usage: %s DEVICE CMD NCALLS NTHREADS  (e.g. %s /dev/deferred 0x6b02 20000 1; "
			"NCALLS >= NTHREADS >= 1)\n", argv[0], argv[0]);
		return 2;
	}
	w = calloc(nthreads, sizeof(*w));
	all = calloc(ncalls, sizeof(*all));
	if (!w || !all) {
		fprintf(stderr, "%s: out of memory for %lu calls\n", argv[0], ncalls);
		return 2;
	}
	pthread_barrier_init(&start_barrier, NULL, (unsigned)nthreads);
	for (unsigned long t = 0; t < nthreads; t++) {
		w[t].fd = open(argv[1], O_RDWR | O_CLOEXEC);
		if (w[t].fd < 0) {
			fprintf(stderr, "%s: cannot open %s: %s (is the device's server running?)\n",
				argv[0], argv[1], strerror(errno));
			return 2;
		}
		w[t].calls = ncalls / nthreads + (t < ncalls % nthreads);
		w[t].lat_ns = all + next;
		next += w[t].calls;
	}
	for (unsigned long t = 0; t < nthreads; t++) {
		int rc = pthread_create(&w[t].thread, NULL, run, &w[t]);

		if (rc) {
			fprintf(stderr, "%s: pthread_create: %s\n", argv[0], strerror(rc));
			return 2;
		}
	}
	for (unsigned long t = 0; t < nthreads; t++) {
		pthread_join(w[t].thread, NULL);
		close(w[t].fd);
		if (w[t].end_ns > end_ns)
			end_ns = w[t].end_ns;
		if (w[t].errors && !errors)
			first_errno = w[t].first_errno;
		errors += w[t].errors;
	}
	if (errors)
		fprintf(stderr, "%s: %lu of %lu ioctl(%s, 0x%lx) calls failed, first: %s\n", argv[0],
			errors, ncalls, argv[1], cmd, strerror(first_errno));

	printf("{\"bench\":\"ioctl\",\"device\":\"%s\",\"cmd\":\"0x%lx\",\"threads\":%lu,\"calls\":%lu,"
	       "\"errors\":%lu,\"calls_per_s\":%.1f,",
	       argv[1], cmd, nthreads, ncalls, errors, (double)ncalls * 1e9 / (double)(end_ns - start_ns));
	bench_print_stats(all, ncalls);
	printf("}\n");
	return errors ? 1 : 0;
}
