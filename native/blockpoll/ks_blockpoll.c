// SPDX-License-Identifier: MIT
//
// libks_blockpoll.so: preloaded (LD_PRELOAD) into Debian's libbpf-tools event
// tools (exitsnoop, tcplife, tcpstates) by the collectors host.
//
// Those tools wait for perf buffer data with epoll_wait(..., 100 ms) only to
// look at their `exiting` flag ten times a second.  They do not need to: a
// signal ends epoll_wait with EINTR (it is never restarted, whatever
// SA_RESTART says: signal(7)), and every perf buffer record wakes the wait.
// So a wait of exactly KS_BLOCKPOLL_MS (the tools' PERF_POLL_TIMEOUT_MS) is
// made without a timeout: the same events at the same moments, without the
// ten idle wake-ups a second that cost each tool ~0.08 % of a core on an idle
// VM.  Any other timeout is passed through untouched, and without
// KS_BLOCKPOLL_MS the library changes nothing.
// One difference remains: a signal that lands after the tool looked at
// `exiting` but before it entered epoll_wait no longer ends the wait within
// 100 ms; it waits for the next record.  The collectors host sends SIGKILL
// stop_timeout_s after its SIGINT, so a stop stays bounded.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>

typedef int (*epoll_wait_fn)(int, struct epoll_event *, int, int);

static epoll_wait_fn real_epoll_wait;
static int block_ms = -2; /* -2: no timeout is replaced */

__attribute__((constructor)) static void ks_blockpoll_init(void)
{
	const char *v = getenv("KS_BLOCKPOLL_MS");
	char *end;
	long ms;

	real_epoll_wait = (epoll_wait_fn)dlsym(RTLD_NEXT, "epoll_wait");
	if (!v || !*v)
		return;
	errno = 0;
	ms = strtol(v, &end, 10);
	if (errno == 0 && *end == '\0' && ms > 0 && ms <= 60000)
		block_ms = (int)ms;
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
	if (!real_epoll_wait) {
		errno = ENOSYS;
		return -1;
	}
	if (timeout == block_ms)
		timeout = -1;
	return real_epoll_wait(epfd, events, maxevents, timeout);
}
