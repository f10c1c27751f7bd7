// SPDX-License-Identifier: GPL-2.0-only
/*
 * sig_lateness: how late a POSIX timer's expiry is seen, by the two ways a program can take it.
 *
 *   sig_lateness handler|sigwait SECONDS INTERVAL_US
 *
 * A periodic POSIX timer (CLOCK_MONOTONIC, absolute first expiry, then every INTERVAL_US) sends
 * a real-time signal.
 *   handler: process-directed (SIGEV_SIGNAL), taken by a sigaction handler while the main thread
 *            sleeps in nanosleep -- the shape of the runtime's timer interrupt.
 *   sigwait: directed at the measuring thread (SIGEV_THREAD_ID), which waits in sigwait with the
 *            signal blocked -- what `cyclictest -x` does.
 * Lateness = CLOCK_MONOTONIC when the expiry is seen (first instruction of the handler / sigwait's
 * return) - the nominal instant of the first expiry not seen yet (a signal later than a period
 * counts in full; the expiries it overran are skipped, as cyclictest does). Prints one JSON line like the other benches.
 * It separates what signal-handler delivery itself costs from what the runtime adds.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

static uint64_t next_ns, end_ns, period_ns, *samples;
static unsigned long nsamples, max_samples;
static volatile sig_atomic_t done;

static void record(uint64_t now)
{
	if (nsamples >= max_samples || now >= end_ns) {
		done = 1;
		return;
	}
	/*
	 * Against the first expiry not seen yet, as cyclictest does: a signal late by more than a
	 * period counts its whole lateness, then the expiries it overran are skipped.
	 */
	samples[nsamples++] = now > next_ns ? now - next_ns : 0;
	do
		next_ns += period_ns;
	while (next_ns <= now);
}

static void handler(int sig)
{
	(void)sig;
	record(bench_now_ns());
}

int main(int argc, char **argv)
{
	int use_handler;
	unsigned long seconds, interval_us;
	struct sigevent sev;
	struct itimerspec its;
	sigset_t set;
	timer_t timer;
	int sig = SIGRTMIN + 3;

	if (argc != 4 || (strcmp(argv[1], "handler") && strcmp(argv[1], "sigwait")) ||
	    !(seconds = strtoul(argv[2], NULL, 10)) || !(interval_us = strtoul(argv[3], NULL, 10))) {
		fprintf(stderr, "usage: %s handler|sigwait SECONDS INTERVAL_US  (e.g. %s handler 10 4000)\n",
			argv[0], argv[0]);
		return 2;
	}
	use_handler = !strcmp(argv[1], "handler");
	period_ns = interval_us * 1000;
	max_samples = seconds * 1000000 / interval_us;
	samples = calloc(max_samples + 1, sizeof(*samples));
	if (!samples)
		return 2;

	sigemptyset(&set);
	sigaddset(&set, sig);
	memset(&sev, 0, sizeof(sev));
	sev.sigev_signo = sig;
	if (use_handler) {
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = handler;
		sa.sa_flags = SA_RESTART;
		sigemptyset(&sa.sa_mask);
		sigaction(sig, &sa, NULL);
		sev.sigev_notify = SIGEV_SIGNAL;
	} else {
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		sev.sigev_notify = SIGEV_THREAD_ID;
		sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
	}
	if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) {
		perror("sig_lateness: timer_create");
		return 2;
	}
	next_ns = bench_now_ns() + period_ns;
	end_ns = next_ns + seconds * 1000000000u;
	its.it_value.tv_sec = (time_t)(next_ns / 1000000000u);
	its.it_value.tv_nsec = (long)(next_ns % 1000000000u);
	its.it_interval.tv_sec = (time_t)(period_ns / 1000000000u);
	its.it_interval.tv_nsec = (long)(period_ns % 1000000000u);
	timer_settime(timer, TIMER_ABSTIME, &its, NULL);

	while (!done) {
		if (use_handler) {
			struct timespec ts = { .tv_sec = 1, .tv_nsec = 0 };

			nanosleep(&ts, NULL);
		} else {
			int s;

			if (!sigwait(&set, &s))
				record(bench_now_ns());
		}
	}
	timer_delete(timer);
	printf("{\"bench\":\"sig_lateness\",\"mode\":\"%s\",\"interval_us\":%lu,", argv[1], interval_us);
	bench_print_stats(samples, nsamples);
	printf("}\n");
	return 0;
}
