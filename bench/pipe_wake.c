// SPDX-License-Identifier: GPL-2.0-only
/*
 * pipe_wake: the reference for "softirq to worker" -- the cheapest hand-off from a signal handler
 * to a sleeping thread.
 *
 *   pipe_wake SECONDS INTERVAL_US
 *
 * A POSIX timer (CLOCK_MONOTONIC, process-directed real-time signal) fires every INTERVAL_US. Its
 * handler (on the main thread, which waits in sigsuspend) reads CLOCK_MONOTONIC and writes that
 * stamp into a pipe; a worker thread, which blocks the signal and sleeps in read(2), reads
 * CLOCK_MONOTONIC as soon as read returns. Sample = worker's stamp - handler's stamp.
 * This is the shape of schedule_work from a timer handler: signal context publishes, an
 * async-signal-safe write wakes a process-context thread.
 * Prints one JSON line: {"bench":"pipe_wake",..., "samples":N,"min_us":..,"p50_us":..,...}
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

static int pipefd[2];
static int sig;
static uint64_t *samples;
static unsigned long nsamples, max_samples;
static volatile sig_atomic_t done;

static void handler(int s)
{
	uint64_t t0 = bench_now_ns();
	int saved = errno;

	(void)s;
	if (write(pipefd[1], &t0, sizeof(t0)) != sizeof(t0))
		done = 1;
	errno = saved;
}

static void *worker(void *arg)
{
	uint64_t t0;

	(void)arg;
	while (nsamples < max_samples) {
		ssize_t n = read(pipefd[0], &t0, sizeof(t0));

		if (n == sizeof(t0))
			samples[nsamples++] = bench_now_ns() - t0;
		else if (n == 0 || (n < 0 && errno != EINTR))
			break;
	}
	done = 1;
	return NULL;
}

int main(int argc, char **argv)
{
	unsigned long seconds, interval_us;
	struct sigaction sa;
	struct sigevent sev;
	struct itimerspec its;
	sigset_t set, old;
	timer_t timer;
	pthread_t thr;

	if (argc != 3 || !(seconds = strtoul(argv[1], NULL, 10)) ||
	    !(interval_us = strtoul(argv[2], NULL, 10))) {
		fprintf(stderr, "usage: %s SECONDS INTERVAL_US  (e.g. %s 10 4000)\n", argv[0], argv[0]);
		return 2;
	}
	max_samples = seconds * 1000000 / interval_us;
	samples = calloc(max_samples ? max_samples : 1, sizeof(*samples));
	if (!samples || pipe(pipefd)) {
		perror("pipe_wake: setup");
		return 2;
	}
	sig = SIGRTMIN + 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);

	/* The worker starts with the signal blocked, so the handler always runs on the main thread. */
	sigemptyset(&set);
	sigaddset(&set, sig);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	if (pthread_create(&thr, NULL, worker, NULL)) {
		perror("pipe_wake: pthread_create");
		return 2;
	}

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = sig;
	if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) {
		perror("pipe_wake: timer_create");
		return 2;
	}
	its.it_interval.tv_sec = interval_us / 1000000;
	its.it_interval.tv_nsec = (long)(interval_us % 1000000) * 1000;
	its.it_value = its.it_interval;
	timer_settime(timer, 0, &its, NULL);

	/* Main thread: wait for signals (unblocked only inside sigsuspend) until the worker is done. */
	sigdelset(&old, sig);
	while (!done)
		sigsuspend(&old);
	timer_delete(timer);
	close(pipefd[1]);
	pthread_join(thr, NULL);
	if (!nsamples) {
		fprintf(stderr, "pipe_wake: no samples\n");
		return 1;
	}
	printf("{\"bench\":\"pipe_wake\",\"interval_us\":%lu,", interval_us);
	bench_print_stats(samples, nsamples);
	printf("}\n");
	return 0;
}
