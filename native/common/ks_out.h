/* SPDX-License-Identifier: MIT */
/*
 * ks_out: the one way a KernelSight producer writes JSON lines.
 *
 * The contract every producer shares (scraper, tracers, collectors):
 *   - one event = one line ending in '\n', at most KS_LINE_MAX (PIPE_BUF) bytes,
 *     written with a single write() so many writers can share one FIFO;
 *   - the FIFO is created on first use, mode 0600, and refused when it is a
 *     symlink, not a FIFO, owned by another user or has any group/other bit;
 *   - with no reader (ENXIO) or a full pipe (EAGAIN) the line is dropped and
 *     counted; the FIFO is reopened later.  Nothing blocks forever.
 *   - the counters live in a small mmap'ed file as well, so they survive a
 *     kill -9 (the page cache keeps what was stored; no syscall per line).
 *
 * The counters file (writer here and in pipeline/kernelsight/fifo.py, reader
 * in pipeline/kernelsight/accounting.py; change all three together):
 *   $KS_DATA_DIR/run/producers/<producer>.<pid>.cnt, mode 0600, directories
 *   0700, made only for a FIFO output when KS_DATA_DIR names an existing
 *   directory.  The name is taken with O_EXCL: when it exists (an earlier
 *   process with this pid, or a second writer in this process) the writer
 *   uses <producer>.<pid>.<start_ticks>[.<k>].cnt; readers go by the header.
 *   The writer holds flock(LOCK_EX) on it for its life: a file nobody holds
 *   is final.  256 bytes, little-endian:
 *
 *     off size
 *       0    8  magic "KSCOUNT\0" (stored last, so a reader never sees half a header)
 *       8    4  u32 version = 1
 *      12    4  u32 pid
 *      16    8  u64 start_ticks: field 22 of /proc/<pid>/stat (pid + this = one process)
 *      24    8  u64 created_ns: CLOCK_REALTIME when the file was made
 *      32   64  producer name, NUL-padded
 *      96    8  u64 write_in_progress: 1 from just before a write() until its
 *               outcome is counted (after a kill -9: that one line may or may
 *               not be in the pipe)
 *     104    8  u64 updated_ns: CLOCK_REALTIME of the last counter change
 *     112    8  u64 last_drop_ns: CLOCK_REALTIME of the last drop (any cause), 0 = none
 *     120    8  u64 lines_written_total
 *     128    8  u64 dropped_no_reader_total
 *     136    8  u64 dropped_full_total
 *     144    8  u64 dropped_oversize_total
 *     152    8  u64 write_errors_total
 *     160    8  u64 dropped_tool_lost_total
 *     168   88  zero (room for more counters)
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
	uint64_t dropped_tool_lost;   /* lost inside a wrapped tool, as the tool reported */
};

#define KS_CNT_FILE_SIZE 256
#define KS_CNT_VERSION 1

struct ks_out {
	int fd;                       /* -1 while the FIFO is closed */
	int is_fifo;                  /* 0: stdout */
	char path[256];
	int block_ms;                 /* how long to wait on a full pipe before dropping */
	uint64_t next_open_ns;        /* CLOCK_MONOTONIC time of the next reopen attempt */
	struct ks_out_counters c;
	unsigned char *cnt;           /* the mmap'ed counters file, NULL without one */
	int cnt_fd;                   /* holds the file's flock while we live; -1 without one */
	uint64_t cnt_drops_published; /* drops already stamped into last_drop_ns */
	char cnt_path[512];
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
 * As ks_out_open, naming the producer in the counters file ([A-Za-z0-9._-],
 * under 64 bytes).  ks_out_open uses the program's name (ks-scraper,
 * ks-syscall, ...), which is what every producer calls itself.
 */
int ks_out_open_producer(struct ks_out *o, const char *path, int block_ms, const char *producer,
			 char *err, size_t errlen);

/*
 * Write one complete line (buf must end in '\n', len <= KS_LINE_MAX).
 * Returns 0 when written, -1 when dropped (and counted).  Never blocks for
 * longer than block_ms.  Returns -2 when stdout is closed (EPIPE): stop.
 */
int ks_out_write_line(struct ks_out *o, const char *buf, size_t len);

struct ks_json;
/*
 * Append the producer_stats counter fields (lines_written_total,
 * dropped_no_reader_total, dropped_full_total, dropped_oversize_total,
 * write_errors_total, dropped_tool_lost_total) to a line being built, so
 * every C producer writes the same set (schema/events/pipeline.json).
 */
void ks_out_json_counters(const struct ks_out *o, struct ks_json *j);

/* Count n events a wrapped tool says it lost before printing them. */
void ks_out_count_tool_lost(struct ks_out *o, uint64_t n);

/*
 * Store the counters into the counters file now (ks_out_write_line does so
 * on every line; call this after changing o->c directly).
 */
void ks_out_publish(struct ks_out *o);

/* Publishes the counters and closes the FIFO; the counters file stays for the accounting. */
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
