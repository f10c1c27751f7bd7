// SPDX-License-Identifier: GPL-2.0
/*
 * test: the lab's user test program for /dev/deferred, rebuilt from shared/spec/lab-abi.md.
 *
 *   test s <seconds>   set the timer            (MY_IOCTL_TIMER_SET)
 *   test c             cancel the timer         (MY_IOCTL_TIMER_CANCEL)
 *   test a <seconds>   allocate memory later    (MY_IOCTL_TIMER_ALLOC)
 *   test p <pid>       monitor a process        (MY_IOCTL_TIMER_MON)
 *
 * Order of events, as in the lab's program (the transcript shows an open/release pair in the
 * device's log for `test x`, so the device is opened before the letter is looked at):
 *   1. argc < 2: usage on stdout, exit 1 (the device is not opened);
 *   2. open /dev/deferred O_RDONLY; failure: perror("/dev/deferred"), exit 1;
 *   3. the first character of argv[1] picks the command; a command whose argument is missing
 *      prints the usage, exit 1; an unknown letter: perror("Wrong parameter"), exit 1;
 *   4. the command's message is printed (stdout), then the ioctl is tried; failure: perror, exit 1.
 * So without a device, `test s 3` prints only "/dev/deferred: No such file or directory".
 * stdout is buffered as usual: when it is a pipe, the message reaches it at exit, after any
 * perror text on stderr -- exactly like the lab's program.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "deferred.h"

static void usage(void)
{
	fputs("Usage: test <options>\n"
	      " options:\n"
	      "\ts <seconds> - set timer to run after <seconds> seconds\n"
	      "\tc           - cancel timer\n"
	      "\ta <seconds> - allocate memory after <seconds> seconds\n"
	      "\tp <pid>     - monitor pid\n"
	      "\n",
	      stdout);
	exit(1);
}

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

/* The command's argument, as the lab parses it: atoi, then widened to unsigned long. */
static unsigned long argument(int argc, char **argv)
{
	if (argc < 3)
		usage();
	return (unsigned long)atoi(argv[2]);
}

int main(int argc, char **argv)
{
	unsigned long value;
	int fd;

	if (argc < 2)
		usage();

	fd = open(DEVICE_PATH, O_RDONLY);
	if (fd < 0)
		fail(DEVICE_PATH);

	switch (argv[1][0]) {
	case 's':
		value = argument(argc, argv);
		printf("Set timer to %ld seconds\n", (long)value);
		if (ioctl(fd, MY_IOCTL_TIMER_SET, value) < 0)
			fail("ioctl set timer error");
		break;
	case 'c':
		printf("Cancel timer\n");
		if (ioctl(fd, MY_IOCTL_TIMER_CANCEL) < 0)
			fail("ioctl cancel timer error");
		break;
	case 'a':
		value = argument(argc, argv);
		printf("Allocate memory after %ld seconds\n", (long)value);
		if (ioctl(fd, MY_IOCTL_TIMER_ALLOC, value) < 0)
			fail("ioctl allocate memory error");
		break;
	case 'p':
		/* The lab prints the pid unsigned: `test p -1` shows 18446744073709551615. */
		value = argument(argc, argv);
		printf("Monitor PID %lu.\n", value);
		if (ioctl(fd, MY_IOCTL_TIMER_MON, value) < 0)
			fail("ioctl monitor pid error");
		break;
	default:
		fail("Wrong parameter");
	}

	close(fd);
	return 0;
}
