// SPDX-License-Identifier: GPL-2.0-only
/*
 * op_costs: what the request path's basic operations cost on the machine it runs on (the VM
 * under emulation, or the host), each timed in a loop of its own.
 *
 *   op_costs [ROUNDS]
 *
 * The operations: a plain add to memory (the cost of an ordinary instruction or so), an atomic
 * add (`lock xadd`), a compare-and-swap, an uncontended lock and unlock as Rust's std Mutex
 * does them (a compare-and-swap, then a swap), `rdtscp`,
 * clock_gettime(CLOCK_MONOTONIC) (a vDSO read, or a system call where the clocksource has none)
 * and a bare system call (getppid). Prints one JSON line per round (default 3):
 *   {"bench":"op_costs","add_ns":..,"xadd_ns":..,"cas_ns":..,"lock_pair_ns":..,
 *    "rdtscp_ns":..,"clock_gettime_ns":..,"syscall_ns":..}
 * Nanoseconds per operation, the loop's own cost included (a few plain instructions).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include "stats.h"

static volatile uint64_t plain;
static uint64_t word;
static uint32_t lock_word;

/* Runs `body` n times and returns the nanoseconds per run. */
#define PER_OP(n, body)                                         \
	({                                                      \
		uint64_t t0_ = bench_now_ns();                  \
		for (long i_ = 0; i_ < (n); i_++) {             \
			body;                                   \
		}                                               \
		(double)(bench_now_ns() - t0_) / (double)(n);   \
	})

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 3;
	const long n = 1000000, slow = 20000;
	unsigned aux;

	if (argc > 2 || rounds < 1) {
		fprintf(stderr, "usage: op_costs [ROUNDS]  (e.g. 3)\n");
		return 2;
	}
	for (long r = 0; r < rounds; r++) {
		double add = PER_OP(n, plain = plain + 1);
		double xadd = PER_OP(n, __atomic_fetch_add(&word, 1, __ATOMIC_SEQ_CST));
		double cas = PER_OP(n, {
			uint64_t e = __atomic_load_n(&word, __ATOMIC_RELAXED);
			__atomic_compare_exchange_n(&word, &e, e + 1, 0, __ATOMIC_SEQ_CST,
						    __ATOMIC_SEQ_CST);
		});
		double lock_pair = PER_OP(n, {
			uint32_t e = 0;
			__atomic_compare_exchange_n(&lock_word, &e, 1, 0, __ATOMIC_ACQUIRE,
						    __ATOMIC_RELAXED);
			plain = plain + 1;
			__atomic_exchange_n(&lock_word, 0, __ATOMIC_RELEASE);
		});
		double tsc = PER_OP(n, plain = plain + __rdtscp(&aux));
		double clock = PER_OP(slow, plain = plain + bench_now_ns());
		double sys = PER_OP(slow, plain = plain + (uint64_t)syscall(SYS_getppid));

		printf("{\"bench\":\"op_costs\",\"add_ns\":%.2f,\"xadd_ns\":%.2f,\"cas_ns\":%.2f,"
		       "\"lock_pair_ns\":%.2f,\"rdtscp_ns\":%.2f,"
		       "\"clock_gettime_ns\":%.2f,\"syscall_ns\":%.2f}\n",
		       add, xadd, cas, lock_pair, tsc, clock, sys);
	}
	return 0;
}
