// SPDX-License-Identifier: GPL-2.0
/*
 * Linked into the test_progs that vm-tests/bpf-selftests.sh builds, with
 * -Wl,--wrap=syscall,--wrap=open,--wrap=setns.  test_progs' main() needs two
 * things the test kernel does not have, for tests this runner does not link:
 *
 * - it registers a session key with add_key() for the signed-program tests,
 *   and exits if that fails; the test kernel has no CONFIG_KEYS (ENOSYS).
 *   Here add_key() succeeds without reaching the kernel.
 * - it saves the current network namespace from /proc/self/ns/net before
 *   each test and restores it with setns() after, for the tests that make
 *   their own; without CONFIG_NET_NS that file does not exist and there is
 *   only one network namespace, which no test can leave.  Here the save
 *   gets an fd of the root directory instead (without CONFIG_NAMESPACES
 *   there is no /proc/self/ns either), and the restore with that fd is a
 *   no-op.
 *
 * Everything else is passed on unchanged.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>

long __real_syscall(long nr, ...);
int __real_open(const char *path, int flags, ...);
int __real_setns(int fd, int nstype);

static int single_netns_fd = -1;

long __wrap_syscall(long nr, ...)
{
	long a[6];
	va_list ap;
	int i;

	/* As glibc's syscall() does: six arguments, whatever the call uses. */
	va_start(ap, nr);
	for (i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);

	if (nr == __NR_add_key)
		return 0;
	return __real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

int __wrap_open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	va_list ap;
	int fd;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	fd = __real_open(path, flags, mode);
	if (fd < 0 && errno == ENOENT && !strcmp(path, "/proc/self/ns/net")) {
		fd = __real_open("/", O_RDONLY | O_DIRECTORY);
		if (fd >= 0)
			single_netns_fd = fd;
	}
	return fd;
}

int __wrap_setns(int fd, int nstype)
{
	if (fd >= 0 && fd == single_netns_fd && nstype == CLONE_NEWNET)
		return 0;
	return __real_setns(fd, nstype);
}
