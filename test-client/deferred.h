/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The interface of the "Deferred work" lab's /dev/deferred device, as a C program sees it.
 * Written from the project's specification (shared/spec/lab-abi.md): the values are the lab's,
 * so a program built against this header talks to the lab's kernel module and to the userspace
 * device alike.
 */
#ifndef DEFERRED_H
#define DEFERRED_H

#include <sys/ioctl.h>

#define DEVICE_PATH "/dev/deferred"
#define MY_MAJOR 42
#define MY_MINOR 0

/* The argument of every command is a plain value, never a pointer. */
#define MY_IOCTL_TIMER_SET    _IOW('k', 1, unsigned long) /* 0x40086b01 (0x40046b01 with -m32) */
#define MY_IOCTL_TIMER_CANCEL _IO('k', 2)                 /* 0x00006b02 */
#define MY_IOCTL_TIMER_ALLOC  _IOW('k', 3, unsigned long) /* 0x40086b03 (0x40046b03 with -m32) */
#define MY_IOCTL_TIMER_MON    _IO('k', 4)                 /* 0x00006b04; the pid travels in arg */

/* What the device's timer does when it fires (the module's `flag`). */
#define TIMER_TYPE_NONE  -1
#define TIMER_TYPE_SET    0
#define TIMER_TYPE_ALLOC  1
#define TIMER_TYPE_MON    2

#endif /* DEFERRED_H */
