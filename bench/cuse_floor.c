// SPDX-License-Identifier: GPL-2.0-only
/*
 * cuse_floor: the floor of a CUSE server's ioctl round trip, no library.
 *
 *   cuse_floor sleep|spin [NAME [WORK_NS]]   serves /dev/NAME (default cuse_floor_MODE) until killed
 *
 * One thread, a raw loop over /dev/cuse: read one request, answer it, repeat. Every ioctl is
 * answered 0, OPEN and RELEASE at once, nothing is logged, nothing else is done. With WORK_NS,
 * each ioctl is answered after that many nanoseconds of busy work (a loop calibrated at start):
 * the floor of a server whose request path takes that long, to see what a server's own work
 * per request costs the round trip.
 *   sleep  read(2) blocks: the thread sleeps in the kernel until a request comes (the floor of a
 *          server that uses no CPU while idle).
 *   spin   the fd is non-blocking and the thread reads in a busy loop, never sleeping (the floor of
 *          a lone client's round trip: the request is taken the moment it is queued; it burns a
 *          CPU all the time, so it is a reference, not a way to serve).
 * Dynamic major, so it runs beside the other servers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_WRITE 4096
/* At least max(8192, 80 + max_write) bytes, or read(2) fails with EINVAL. */
static uint8_t buf[8192 + MAX_WRITE];

/* Iterations of busy_work's loop per ioctl (0: none). */
static unsigned long work_loops;

static void busy_work(unsigned long loops)
{
	for (volatile unsigned long i = 0; i < loops; i++)
		;
}

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* How many loops take work_ns: the loop timed over ~10 ms, the fastest of three tries. */
static unsigned long loops_for(double work_ns)
{
	double best = 0;
	unsigned long n = 1000;

	if (work_ns <= 0)
		return 0;
	while (n < (1UL << 40)) {
		double t0 = now_ns(), t;

		busy_work(n);
		t = now_ns() - t0;
		if (t >= 1e7)
			break;
		n *= 2;
	}
	for (int i = 0; i < 3; i++) {
		double t0 = now_ns(), t, rate;

		busy_work(n);
		t = now_ns() - t0;
		rate = (double)n / t;
		if (rate > best)
			best = rate;
	}
	return (unsigned long)(work_ns * best + 0.5);
}

static void reply(int fd, uint64_t unique, int error, const void *body, size_t len)
{
	struct fuse_out_header h = {
		.len = (uint32_t)(sizeof(h) + len), .error = error, .unique = unique
	};
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)body, len } };

	/* ENOENT: the request was interrupted and dropped by the kernel; nothing to do. */
	if (writev(fd, iov, len ? 2 : 1) < 0 && errno != ENOENT) {
		perror("cuse_floor: writev");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	char name[100], info[128];
	int spin, fd;

	if (argc < 2 || argc > 4 || (strcmp(argv[1], "sleep") && strcmp(argv[1], "spin"))) {
		fprintf(stderr,
			"usage: %s sleep|spin [NAME [WORK_NS]]  (serves /dev/NAME, default cuse_floor_MODE;\n"
			"       each ioctl answered after WORK_NS ns of busy work, default 0)\n",
			argv[0]);
		return 2;
	}
	if (argc > 3) {
		char *end;
		double work_ns = strtod(argv[3], &end);

		if (*end || end == argv[3] || work_ns < 0 || work_ns > 1e9) {
			fprintf(stderr, "cuse_floor: WORK_NS '%s' is not a number of nanoseconds (0-1e9)\n",
				argv[3]);
			return 2;
		}
		work_loops = loops_for(work_ns);
	}
	spin = !strcmp(argv[1], "spin");
	snprintf(name, sizeof(name), "%s", argc > 2 ? argv[2] : spin ? "cuse_floor_spin" : "cuse_floor_sleep");
	fd = open("/dev/cuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("cuse_floor: open /dev/cuse (is the cuse module loaded?)");
		return 1;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		struct fuse_in_header *in = (struct fuse_in_header *)buf;

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR || errno == ENOENT)
				continue;
			if (errno == ENODEV || errno == ECONNABORTED)
				return 0;
			perror("cuse_floor: read");
			return 1;
		}
		if ((size_t)n < sizeof(*in))
			continue;
		switch (in->opcode) {
		case CUSE_INIT: {
			struct {
				struct cuse_init_out out;
				char info[128];
			} __attribute__((packed)) r;
			int ilen = snprintf(info, sizeof(info), "DEVNAME=%s", name) + 1;

			memset(&r, 0, sizeof(r));
			r.out.major = FUSE_KERNEL_VERSION;
			r.out.minor = FUSE_KERNEL_MINOR_VERSION;
			r.out.flags = CUSE_UNRESTRICTED_IOCTL;
			r.out.max_read = MAX_WRITE;
			r.out.max_write = MAX_WRITE;
			memcpy(r.info, info, (size_t)ilen);
			reply(fd, in->unique, 0, &r, sizeof(r.out) + (size_t)ilen);
			/* Only after INIT: the handshake's own read may as well block. */
			if (spin && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
				perror("cuse_floor: fcntl O_NONBLOCK");
				return 1;
			}
			break;
		}
		case FUSE_OPEN: {
			struct fuse_open_out o = { 0 };

			reply(fd, in->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_IOCTL: {
			struct fuse_ioctl_out o = { 0 };

			busy_work(work_loops);
			reply(fd, in->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_RELEASE:
			reply(fd, in->unique, 0, NULL, 0);
			break;
		case FUSE_INTERRUPT: /* every request is answered at once: nothing to interrupt */
			break;
		default:
			reply(fd, in->unique, -ENOSYS, NULL, 0);
			break;
		}
	}
}
