/* SPDX-License-Identifier: MIT */
/*
 * ks_out: the one way a KernelSight producer writes JSON lines.
 *
 * The contract every producer shares (scraper, tracers, collectors):
 *   - one event = one line ending in '\n', at most KS_LINE_MAX (PIPE_BUF) bytes,
 *     written with a single write() so many writers can share one FIFO;
 *   - the FIFO is created on first use, mode 0600, and refused when it is a
 *     symlink, not a FIFO, owned by another user or open to others;
 *   - with no reader (ENXIO) or a full pipe (EAGAIN) the line is dropped and
 *     counted; the FIFO is reopened later.  Nothing blocks forever.
 */
#ifndef KS_OUT_H
#define KS_OUT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KS_LINE_MAX 4096          /* PIPE_BUF on Linux: writes up to this are atomic */
#define KS_DEFAULT_FIFO "/tmp/kernelsight"

struct ks_out_counters {
	uint64_t lines_written;       /* whole lines handed to the kernel */
	uint64_t dropped_no_reader;   /* FIFO had no reader (ENXIO / EPIPE) */
	uint64_t dropped_full;        /* pipe stayed full past block_ms (EAGAIN) */
	uint64_t dropped_oversize;    /* line longer than KS_LINE_MAX or not built */
	uint64_t write_errors;        /* any other write()/open() failure */
};

struct ks_out {
	int fd;                       /* -1 while the FIFO is closed */
	int is_fifo;                  /* 0: stdout */
	char path[256];
	int block_ms;                 /* how long to wait on a full pipe before dropping */
	uint64_t next_open_ns;        /* CLOCK_MONOTONIC time of the next reopen attempt */
	struct ks_out_counters c;
};

/*
 * Check (and create if absent) a FIFO at path for the current euid.
 * Returns 0, or -1 with a one-line human message in err.
 */
int ks_fifo_ensure(const char *path, char *err, size_t errlen);

/*
 * path NULL or "-" means stdout; anything else is a FIFO checked with
 * ks_fifo_ensure().  Returns 0, or -1 with a message in err.
 */
int ks_out_open(struct ks_out *o, const char *path, int block_ms, char *err, size_t errlen);

/*
 * Write one complete line (buf must end in '\n', len <= KS_LINE_MAX).
 * Returns 0 when written, -1 when dropped (and counted).  Never blocks for
 * longer than block_ms.  Returns -2 when stdout is closed (EPIPE): stop.
 */
int ks_out_write_line(struct ks_out *o, const char *buf, size_t len);

void ks_out_close(struct ks_out *o);

/* Unix epoch nanoseconds (CLOCK_REALTIME). */
uint64_t ks_now_epoch_ns(void);
/* CLOCK_MONOTONIC nanoseconds, the clock bpf_ktime_get_ns() uses. */
uint64_t ks_now_mono_ns(void);
/* Offset to add to a CLOCK_MONOTONIC timestamp to get Unix epoch ns. */
int64_t ks_mono_to_epoch_offset_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* KS_OUT_H */
