// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "ks_out.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REOPEN_INTERVAL_NS 500000000ULL /* retry a reader-less FIFO twice a second */

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t ks_now_epoch_ns(void) { return clock_ns(CLOCK_REALTIME); }
uint64_t ks_now_mono_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

int64_t ks_mono_to_epoch_offset_ns(void)
{
	/* Read monotonic on both sides of realtime and take the midpoint. */
	uint64_t m1 = ks_now_mono_ns();
	uint64_t r = ks_now_epoch_ns();
	uint64_t m2 = ks_now_mono_ns();

	return (int64_t)r - (int64_t)(m1 + (m2 - m1) / 2);
}

/* Group may be given write access (0620); nothing else beyond the owner. */
static int mode_is_tight(mode_t m)
{
	return (m & 07777 & ~(mode_t)0620) == 0;
}

static int check_fifo_stat(const char *path, const struct stat *st, char *err, size_t errlen)
{
	if (S_ISLNK(st->st_mode)) {
		snprintf(err, errlen,
			 "%s is a symlink; refusing to follow it. Remove it (rm %s) and start again",
			 path, path);
		return -1;
	}
	if (!S_ISFIFO(st->st_mode)) {
		snprintf(err, errlen,
			 "%s exists but is not a FIFO (%s); remove it (rm %s) and start again",
			 path, S_ISREG(st->st_mode) ? "a regular file" :
			       S_ISDIR(st->st_mode) ? "a directory" : "another file type",
			 path);
		return -1;
	}
	if (st->st_uid != geteuid()) {
		snprintf(err, errlen,
			 "%s is owned by uid %u, not by us (uid %u); remove it and start again",
			 path, (unsigned)st->st_uid, (unsigned)geteuid());
		return -1;
	}
	if (!mode_is_tight(st->st_mode)) {
		snprintf(err, errlen,
			 "%s has mode %04o, open to others; run chmod 600 %s or remove it",
			 path, (unsigned)(st->st_mode & 07777), path);
		return -1;
	}
	return 0;
}

int ks_fifo_ensure(const char *path, char *err, size_t errlen)
{
	struct stat st;

	if (lstat(path, &st) == 0)
		return check_fifo_stat(path, &st, err, errlen);
	if (errno != ENOENT) {
		snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
		return -1;
	}
	if (mkfifo(path, 0600) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create FIFO %s: %s", path, strerror(errno));
		return -1;
	}
	/* mkfifo honours the umask, which can only make it tighter; check what is there now
	 * (another process may have won the race to create it). */
	if (lstat(path, &st) != 0) {
		snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
		return -1;
	}
	return check_fifo_stat(path, &st, err, errlen);
}

static void try_open_fifo(struct ks_out *o)
{
	struct stat st;
	int fd;

	o->next_open_ns = ks_now_mono_ns() + REOPEN_INTERVAL_NS;
	/* O_NONBLOCK: fail with ENXIO instead of waiting for a reader; writes of
	 * at most PIPE_BUF are then all-or-nothing (EAGAIN when full). */
	fd = open(o->path, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != geteuid()) {
		close(fd);
		o->c.write_errors++;
		return;
	}
	o->fd = fd;
}

int ks_out_open(struct ks_out *o, const char *path, int block_ms, char *err, size_t errlen)
{
	memset(o, 0, sizeof(*o));
	o->block_ms = block_ms;
	if (!path || strcmp(path, "-") == 0) {
		o->fd = STDOUT_FILENO;
		return 0;
	}
	if (strlen(path) >= sizeof(o->path)) {
		snprintf(err, errlen, "output path too long: %s", path);
		return -1;
	}
	if (ks_fifo_ensure(path, err, errlen) != 0)
		return -1;
	/* A reader that goes away must not kill us with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	strcpy(o->path, path);
	o->is_fifo = 1;
	o->fd = -1;
	try_open_fifo(o);
	return 0;
}

static int wait_writable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };

	return ms > 0 && poll(&p, 1, ms) == 1 && (p.revents & POLLOUT);
}

int ks_out_write_line(struct ks_out *o, const char *buf, size_t len)
{
	ssize_t n;

	if (len == 0 || len > KS_LINE_MAX || buf[len - 1] != '\n') {
		o->c.dropped_oversize++;
		return -1;
	}
	if (!o->is_fifo) {
		/* stdout may be a file or tty, where a short write is legal: finish it. */
		size_t off = 0;

		while (off < len) {
			n = write(o->fd, buf + off, len - off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				o->c.write_errors++;
				return errno == EPIPE ? -2 : -1;
			}
			off += (size_t)n;
		}
		o->c.lines_written++;
		return 0;
	}
	if (o->fd < 0) {
		if (ks_now_mono_ns() < o->next_open_ns) {
			o->c.dropped_no_reader++;
			return -1;
		}
		try_open_fifo(o);
		if (o->fd < 0) {
			o->c.dropped_no_reader++;
			return -1;
		}
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		n = write(o->fd, buf, len);
		if (n == (ssize_t)len) {
			o->c.lines_written++;
			return 0;
		}
		if (n < 0 && errno == EINTR) {
			attempt--;
			continue;
		}
		if (n < 0 && errno == EAGAIN) {
			if (attempt == 0 && wait_writable(o->fd, o->block_ms))
				continue;
			o->c.dropped_full++;
			return -1;
		}
		if (n < 0 && errno == EPIPE) {
			/* Reader went away: close, count, reopen later. */
			close(o->fd);
			o->fd = -1;
			o->next_open_ns = ks_now_mono_ns() + REOPEN_INTERVAL_NS;
			o->c.dropped_no_reader++;
			return -1;
		}
		/* A pipe write of <= PIPE_BUF is never partial; anything else is an error. */
		o->c.write_errors++;
		return -1;
	}
	o->c.dropped_full++;
	return -1;
}

void ks_out_close(struct ks_out *o)
{
	if (o->is_fifo && o->fd >= 0)
		close(o->fd);
	o->fd = -1;
}
