// SPDX-License-Identifier: GPL-2.0-only
/*
 * cuse_ref: the reference for the ioctl round-trip benchmark.
 *
 * The smallest useful CUSE server on libfuse3: unrestricted ioctls, every ioctl answered 0,
 * open/release trivially, libfuse's multi-threaded loop (cuse_lowlevel_main without -s).
 * Dynamic major, so it runs beside /dev/deferred.
 *
 *   cuse_ref [NAME]        serves /dev/NAME (default cuse_ref) in the foreground until SIGINT/SIGTERM
 */
#define FUSE_USE_VERSION 31

#include <cuse_lowlevel.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <string.h>

static void ref_open(fuse_req_t req, struct fuse_file_info *fi)
{
	fuse_reply_open(req, fi);
}

static void ref_release(fuse_req_t req, struct fuse_file_info *fi)
{
	(void)fi;
	fuse_reply_err(req, 0);
}

static void ref_ioctl(fuse_req_t req, int cmd, void *arg, struct fuse_file_info *fi,
		      unsigned int flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	(void)cmd; (void)arg; (void)fi; (void)flags; (void)in_buf; (void)in_bufsz; (void)out_bufsz;
	fuse_reply_ioctl(req, 0, NULL, 0);
}

static const struct cuse_lowlevel_ops ref_ops = {
	.open = ref_open,
	.release = ref_release,
	.ioctl = ref_ioctl,
};

int main(int argc, char **argv)
{
	char devname[128];
	const char *name = argc > 1 ? argv[1] : "cuse_ref";
	const char *dev_info_argv[] = { devname };
	struct cuse_info ci;
	/* -f: foreground; no -s: libfuse's multi-threaded loop. */
	char *fuse_argv[] = { argv[0], "-f", NULL };

	if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
		fprintf(stderr, "usage: %s [NAME]  (serves /dev/NAME, default cuse_ref)\n", argv[0]);
		return 2;
	}
	snprintf(devname, sizeof(devname), "DEVNAME=%s", name);
	memset(&ci, 0, sizeof(ci));
	ci.dev_major = 0; /* dynamic */
	ci.dev_minor = 0;
	ci.dev_info_argc = 1;
	ci.dev_info_argv = dev_info_argv;
	ci.flags = CUSE_UNRESTRICTED_IOCTL;

	return cuse_lowlevel_main(2, fuse_argv, &ci, &ref_ops, NULL);
}
