/* SPDX-License-Identifier: GPL-2.0-only */
/* Latency statistics shared by the C bench programs: one JSON line per run. */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (p in [0, 100]) of a sorted array, in microseconds. */
static inline double bench_pct_us(const uint64_t *v, unsigned long n, double p)
{
	unsigned long k = (unsigned long)(p / 100.0 * (double)n + 0.999999);

	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return (double)v[k - 1] / 1000.0;
}

/*
 * Sorts v and prints the statistics fields (no braces):
 *   "samples":N,"min_us":..,"p50_us":..,"p99_us":..,"p999_us":..,"max_us":..,"cdf_us":[p0..p100]
 */
static inline void bench_print_stats(uint64_t *v, unsigned long n)
{
	qsort(v, n, sizeof(*v), bench_cmp_u64);
	printf("\"samples\":%lu,\"min_us\":%.3f,\"p50_us\":%.3f,\"p99_us\":%.3f,\"p999_us\":%.3f,"
	       "\"max_us\":%.3f,\"cdf_us\":[",
	       n, (double)v[0] / 1000.0, bench_pct_us(v, n, 50), bench_pct_us(v, n, 99),
	       bench_pct_us(v, n, 99.9), (double)v[n - 1] / 1000.0);
	for (int p = 0; p <= 100; p++)
		printf("%s%.3f", p ? "," : "", bench_pct_us(v, n, p));
	printf("]");
}

#endif
