// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "ks_out.h"
#include "ks_json.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
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

/* Only the owner: any group/other bit (or setuid/setgid/sticky) is refused. */
static int mode_is_tight(mode_t m)
{
	return (m & 07777 & ~(mode_t)0600) == 0;
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
			 "%s has mode %04o, open to others (only its owner may use it); run chmod 600 %s or remove it",
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

/* ---- counters file (layout in ks_out.h) ---------------------------------- */

#define CNT_MAGIC "KSCOUNT"             /* 7 chars + NUL = 8 bytes */
#define CNT_OFF_VERSION 8
#define CNT_OFF_PID 12
#define CNT_OFF_START_TICKS 16
#define CNT_OFF_CREATED_NS 24
#define CNT_OFF_PRODUCER 32
#define CNT_PRODUCER_MAX 64
#define CNT_OFF_IN_PROGRESS 96
#define CNT_OFF_UPDATED_NS 104
#define CNT_OFF_LAST_DROP_NS 112
#define CNT_OFF_COUNTERS 120              /* the six u64 of struct ks_out_counters, in order */

/* Relaxed atomic stores: a reader in another process never sees a torn u64. */
static void cnt_put(unsigned char *m, size_t off, uint64_t v)
{
	__atomic_store_n((uint64_t *)(void *)(m + off), htole64(v), __ATOMIC_RELAXED);
}

static uint64_t drops_of(const struct ks_out_counters *c)
{
	return c->dropped_no_reader + c->dropped_full + c->dropped_oversize + c->write_errors +
	       c->dropped_tool_lost;
}

void ks_out_publish(struct ks_out *o)
{
	const uint64_t *v = &o->c.lines_written;
	uint64_t now, drops;

	if (!o->cnt)
		return;
	now = ks_now_epoch_ns();
	for (size_t i = 0; i < sizeof(o->c) / sizeof(uint64_t); i++)
		cnt_put(o->cnt, CNT_OFF_COUNTERS + 8 * i, v[i]);
	drops = drops_of(&o->c);
	if (drops != o->cnt_drops_published) {
		cnt_put(o->cnt, CNT_OFF_LAST_DROP_NS, now);
		o->cnt_drops_published = drops;
	}
	cnt_put(o->cnt, CNT_OFF_UPDATED_NS, now);
	cnt_put(o->cnt, CNT_OFF_IN_PROGRESS, 0);
}

/* Field 22 of /proc/self/stat: process start in clock ticks since boot. */
static uint64_t self_start_ticks(void)
{
	char buf[1024];
	unsigned long long v = 0;
	ssize_t n;
	char *p;
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')');      /* comm may hold spaces and ')' */
	if (!p)
		return 0;
	p++;
	for (int field = 3; field < 22 && p; field++) {
		p = strchr(p + 1, ' ');
	}
	if (p && sscanf(p, " %llu", &v) != 1)
		v = 0;
	return v;
}

static int producer_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= CNT_PRODUCER_MAX || s[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '-' || ch == '_' || ch == '.'))
			return 0;
	}
	return 1;
}

/* Open (creating 0700) the directory name inside dirfd; refuse symlinks and other owners. */
static int open_private_dir(int dirfd, const char *name)
{
	struct stat st;
	int fd;

	if (mkdirat(dirfd, name, 0700) != 0 && errno != EEXIST)
		return -1;
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 077)) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Make $KS_DATA_DIR/run/producers/<producer>.<pid>.cnt and map it.  Any
 * failure leaves o->cnt NULL: the producer then works as before, counting
 * in memory and in its producer_stats lines only.
 */
static void cnt_open(struct ks_out *o, const char *producer)
{
	const char *data = getenv("KS_DATA_DIR");
	uint64_t ticks = self_start_ticks();
	int dfd, rfd, pfd, fd = -1;
	char name[160];
	unsigned char *m;

	if (!data || !*data || !producer || !producer_name_ok(producer))
		return;
	/* The data dir itself belongs to db.py; only run/ and run/producers/ are made here. */
	dfd = open(data, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return;
	rfd = open_private_dir(dfd, "run");
	close(dfd);
	if (rfd < 0)
		return;
	pfd = open_private_dir(rfd, "producers");
	close(rfd);
	if (pfd < 0)
		return;
	/* O_EXCL on every name: an existing file is someone's final counts, never reused. */
	for (int k = -1; k < 10 && fd < 0; k++) {
		if (k < 0)
			snprintf(name, sizeof(name), "%s.%d.cnt", producer, (int)getpid());
		else if (k == 0)
			snprintf(name, sizeof(name), "%s.%d.%llu.cnt", producer, (int)getpid(),
				 (unsigned long long)ticks);
		else
			snprintf(name, sizeof(name), "%s.%d.%llu.%d.cnt", producer, (int)getpid(),
				 (unsigned long long)ticks, k);
		fd = openat(pfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0 && errno != EEXIST)
			break;
	}
	if (fd < 0) {
		close(pfd);
		return;
	}
	/* Blocking: only a reader testing liveness can hold it, for a moment.
	 * Allocated, not ftruncate'd: a store into a hole of a mapped file on a
	 * full filesystem is SIGBUS; without room we go on without the file. */
	if (flock(fd, LOCK_EX) != 0 || posix_fallocate(fd, 0, KS_CNT_FILE_SIZE) != 0) {
		unlinkat(pfd, name, 0);
		close(pfd);
		close(fd);
		return;
	}
	close(pfd);
	m = mmap(NULL, KS_CNT_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		close(fd);
		return;
	}
	{
		uint32_t version = htole32(KS_CNT_VERSION), pid = htole32((uint32_t)getpid());

		memcpy(m + CNT_OFF_VERSION, &version, 4);
		memcpy(m + CNT_OFF_PID, &pid, 4);
	}
	cnt_put(m, CNT_OFF_START_TICKS, ticks);
	cnt_put(m, CNT_OFF_CREATED_NS, ks_now_epoch_ns());
	strncpy((char *)m + CNT_OFF_PRODUCER, producer, CNT_PRODUCER_MAX - 1);
	o->cnt = m;
	o->cnt_fd = fd;
	o->cnt_drops_published = 0;
	snprintf(o->cnt_path, sizeof(o->cnt_path), "%s/run/producers/%s", data, name);
	ks_out_publish(o);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memcpy(m, CNT_MAGIC, 8);
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
	return ks_out_open_producer(o, path, block_ms, program_invocation_short_name, err, errlen);
}

int ks_out_open_producer(struct ks_out *o, const char *path, int block_ms, const char *producer,
			 char *err, size_t errlen)
{
	memset(o, 0, sizeof(*o));
	o->cnt_fd = -1;
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
	cnt_open(o, producer);
	try_open_fifo(o);
	ks_out_publish(o);
	return 0;
}

static int wait_writable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };

	return ms > 0 && poll(&p, 1, ms) == 1 && (p.revents & POLLOUT);
}

static int write_line(struct ks_out *o, const char *buf, size_t len);

int ks_out_write_line(struct ks_out *o, const char *buf, size_t len)
{
	int r;

	if (o->cnt)
		cnt_put(o->cnt, CNT_OFF_IN_PROGRESS, 1);
	r = write_line(o, buf, len);
	ks_out_publish(o);
	return r;
}

/* lines_written is counted only once write() has taken the whole line. */
static int write_line(struct ks_out *o, const char *buf, size_t len)
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

void ks_out_count_tool_lost(struct ks_out *o, uint64_t n)
{
	o->c.dropped_tool_lost += n;
	ks_out_publish(o);
}

void ks_out_json_counters(const struct ks_out *o, struct ks_json *j)
{
	ks_json_u64(j, "lines_written_total", o->c.lines_written);
	ks_json_u64(j, "dropped_no_reader_total", o->c.dropped_no_reader);
	ks_json_u64(j, "dropped_full_total", o->c.dropped_full);
	ks_json_u64(j, "dropped_oversize_total", o->c.dropped_oversize);
	ks_json_u64(j, "write_errors_total", o->c.write_errors);
	ks_json_u64(j, "dropped_tool_lost_total", o->c.dropped_tool_lost);
}

void ks_out_close(struct ks_out *o)
{
	if (o->is_fifo && o->fd >= 0)
		close(o->fd);
	o->fd = -1;
	if (o->cnt) {
		ks_out_publish(o);
		munmap(o->cnt, KS_CNT_FILE_SIZE);
		o->cnt = NULL;
		close(o->cnt_fd);   /* releases the flock: the file is final */
		o->cnt_fd = -1;
	}
}
