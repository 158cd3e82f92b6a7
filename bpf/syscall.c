// SPDX-License-Identifier: MIT
/*
 * ks-syscall: per-syscall latency/error stats aggregated in the kernel
 * (syscall_stats lines each interval) plus per-event `syscall` lines for calls
 * slower than --min-latency, except blocking waits (--slow-exclude).  Syscall
 * names come from a table generated at build time from the kernel UAPI header
 * asm/unistd_64.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "ks_tracer.h"
#include "syscall.h"
#include "syscall.skel.h"
#include "syscall_names.h"

#define TOP_ERRNOS 4

/*
 * Calls that are slow because waiting is their job: sleeps, futex and event
 * loop waits, child and signal waits, accept, async I/O and IPC receives.
 * They made most slow-call lines and say nothing about the system.  read and
 * recv* stay: a read waiting on a pipe cannot be told from a slow one.
 */
/* ", " so that --help can wrap it; names are trimmed when parsed */
#define SLOW_EXCLUDE_DEFAULT                                                                                   \
	"clock_nanosleep, nanosleep, futex, futex_waitv, epoll_wait, epoll_pwait, epoll_pwait2, poll, ppoll, " \
	"select, pselect6, wait4, waitid, rt_sigtimedwait, rt_sigsuspend, pause, accept, accept4, "          \
	"io_getevents, io_pgetevents, io_uring_enter, msgrcv, semop, semtimedop, mq_timedreceive"

/* Calls whose first argument is a file descriptor, among those that can wait on I/O: a slow
 * one's line names the descriptor's kind (fd_type), so a wait on a pipe or socket is told
 * from a slow read of a file or block device. */
static const char *const FD_ARG0_CALLS[] = {
	"read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2",
	"recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "fsync", "fdatasync",
	"sync_file_range", "fallocate", "ftruncate", "getdents64", "ioctl", "flock", "splice", "sendfile",
	"copy_file_range", "syncfs",
};

static double min_latency_ms = 10.0;
static uint64_t slow_skip[KS_SC_MAX / 64];
static int n_slow_skip;
static bool slow_skip_set;

enum { OPT_MINLAT = 0x2000, OPT_SLOW_EXCLUDE };

static const struct argp_option options[] = {
	{ "min-latency", OPT_MINLAT, "MS", 0, "Emit a `syscall` line for calls slower than MS milliseconds (default 10)", 0 },
	{ "slow-exclude", OPT_SLOW_EXCLUDE, "NAME[,NAME...]", 0,
	  "Never emit `syscall` lines for these syscalls (syscall_stats still count them); replaces the default list "
	  "of blocking waits, '' = none. Default: " SLOW_EXCLUDE_DEFAULT, 0 },
	{ 0 },
};

static int sc_nr(const char *name)
{
	for (unsigned nr = 0; nr < KS_SYSCALL_NAMES_N && nr < KS_SC_MAX; nr++)
		if (ks_syscall_names[nr] && strcmp(ks_syscall_names[nr], name) == 0)
			return (int)nr;
	return -1;
}

/* Comma-separated names into slow_skip; an unknown name is a usage error,
 * except in the default list (older headers may lack the newest calls). */
static void set_slow_skip(const char *list, bool strict)
{
	char *copy = strdup(list), *save = NULL;

	if (!copy) {
		fprintf(stderr, "%s: out of memory\n", program_invocation_short_name);
		exit(1);
	}
	memset(slow_skip, 0, sizeof(slow_skip));
	n_slow_skip = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		size_t len;
		int nr;

		while (*tok == ' ')
			tok++;
		len = strlen(tok);
		while (len && tok[len - 1] == ' ')
			tok[--len] = 0;
		if (!*tok)
			continue;
		nr = sc_nr(tok);
		if (nr < 0) {
			if (!strict)
				continue;
			fprintf(stderr, "%s: invalid --slow-exclude name '%s' (expected x86_64 syscall names such as futex)\n",
				program_invocation_short_name, tok);
			exit(2);
		}
		if (!(slow_skip[nr / 64] & (1ULL << (nr % 64))))
			n_slow_skip++;
		slow_skip[nr / 64] |= 1ULL << (nr % 64);
	}
	free(copy);
	slow_skip_set = true;
}

static error_t parse(int key, char *arg, struct argp_state *st)
{
	(void)st;
	switch (key) {
	case OPT_MINLAT:
		min_latency_ms = ks_parse_double(program_invocation_short_name, "--min-latency", arg, 0, 1e7);
		return 0;
	case OPT_SLOW_EXCLUDE:
		set_slow_skip(arg, true);
		return 0;
	default:
		return ARGP_ERR_UNKNOWN;
	}
}

static struct syscall_bpf *skel;
static int stats_fd, errno_fd;
static struct ks_sc_stat *percpu;   /* ncpu values */
static struct ks_sc_stat *batch_vals;  /* batch_n * ncpu values */
static uint32_t *batch_keys, batch_n;
static bool batch_ok = true;

static const char *sc_name(unsigned nr, char *buf, size_t len)
{
	if (nr < KS_SYSCALL_NAMES_N && ks_syscall_names[nr])
		return ks_syscall_names[nr];
	snprintf(buf, len, "syscall_%u", nr);
	return buf;
}

/* The S_IFMT bits of a descriptor's inode as a word; an anonymous inode (eventfd, timerfd,
 * signalfd, epoll, pidfd...) has none. */
static const char *fd_type_name(uint32_t fd_mode)
{
	switch (fd_mode & S_IFMT) {
	case S_IFREG: return "file";
	case S_IFBLK: return "block";
	case S_IFIFO: return "pipe";
	case S_IFSOCK: return "socket";
	case S_IFCHR: return "char";
	case S_IFDIR: return "dir";
	case S_IFLNK: return "link";
	case 0: return "anon";
	default: return "other";
	}
}

static int on_event(void *ctx, void *data, size_t size)
{
	struct ks_tracer *t = ctx;
	const struct ks_sc_event *e = data;
	struct ks_json j;
	char nb[32], comm[17];

	if (size < sizeof(*e))
		return 0;
	memcpy(comm, e->comm, 16);
	comm[16] = 0;
	ks_json_begin(&j, "syscall", e->ts_ns + t->epoch_off_ns);
	ks_json_u64(&j, "pid", e->pid);
	ks_json_u64(&j, "tid", e->tid);
	ks_json_str(&j, "comm", comm);
	ks_json_u64(&j, "syscall_nr", e->nr);
	ks_json_str(&j, "syscall", sc_name(e->nr, nb, sizeof(nb)));
	ks_json_u64(&j, "latency_ns", e->latency_ns);
	ks_json_i64(&j, "ret", e->ret);
	ks_json_i64(&j, "arg0", e->arg0);
	ks_json_u64(&j, "cgroup_id", e->cgroup_id);
	if (e->fd_mode & KS_FD_KNOWN)
		ks_json_str(&j, "fd_type", fd_type_name(e->fd_mode));
	else
		ks_json_null(&j, "fd_type");
	ks_emit(t, &j, false);
	return 0;
}

struct errsum { unsigned err; uint64_t n; };
/* One process's failures of one call with one errno in an interval. */
struct procerr { uint32_t tgid, nr, err; uint64_t n, cgroup_id; };

#define ERRNOS_PER_CALL 16   /* distinct errnos summed per syscall before its top TOP_ERRNOS */
#define PROC_ERRORS_TOP 8    /* syscall_errors lines per interval, most failures first ... */
#define PROC_ERRORS_MIN 10   /* ... of at least this many failures */

static int by_count_desc(const void *a, const void *b)
{
	const struct procerr *x = a, *y = b;

	return x->n < y->n ? 1 : x->n > y->n ? -1 : 0;
}

static void add_errsum(struct errsum *sums, unsigned err, uint64_t n)
{
	for (int i = 0; i < ERRNOS_PER_CALL; i++) {
		if (sums[i].n == 0 || sums[i].err == err) {
			sums[i].err = err;
			sums[i].n += n;
			return;
		}
	}
	/* more distinct errnos than slots: the rarest ones are left out of the top list */
}

static void emit_proc_errors(struct ks_tracer *t, struct procerr *pe, int n, double interval_s, uint64_t now)
{
	qsort(pe, n, sizeof(*pe), by_count_desc);
	for (int i = 0; i < n && i < PROC_ERRORS_TOP && pe[i].n >= PROC_ERRORS_MIN; i++) {
		struct ks_json j;
		char nb[32], eb[16], comm[32] = "", path[48];
		const char *en = strerrorname_np((int)pe[i].err);
		FILE *f;

		if (!en) {
			snprintf(eb, sizeof(eb), "E%u", pe[i].err);
			en = eb;
		}
		snprintf(path, sizeof(path), "/proc/%u/comm", pe[i].tgid);
		f = fopen(path, "re");
		if (f) {  /* gone already: the line keeps its pid and an empty comm */
			if (!fgets(comm, sizeof(comm), f))
				comm[0] = 0;
			fclose(f);
			comm[strcspn(comm, "\n")] = 0;
		}
		ks_json_begin(&j, "syscall_errors", now);
		ks_json_u64(&j, "pid", pe[i].tgid);
		ks_json_str(&j, "comm", comm);
		ks_json_str(&j, "syscall", sc_name(pe[i].nr, nb, sizeof(nb)));
		ks_json_u64(&j, "errno", pe[i].err);
		ks_json_str(&j, "errno_name", en);
		ks_json_u64(&j, "count", pe[i].n);
		ks_json_f64(&j, "interval_s", interval_s);
		ks_json_u64(&j, "cgroup_id", pe[i].cgroup_id);
		ks_emit(t, &j, false);
	}
}

/* One syscall_stats line from the per-CPU values pc of [slot][nr], and that entry zeroed. */
static void emit_stat(struct ks_tracer *t, unsigned nr, unsigned slot, const struct ks_sc_stat *pc,
		      const struct errsum (*errs)[TOP_ERRNOS], double interval_s, uint64_t now)
{
	uint32_t idx = nr + slot * KS_SC_MAX;
	struct ks_sc_stat s;
	struct ks_json j;
	char nb[32], names[128];
	uint64_t top_e[TOP_ERRNOS], top_n[TOP_ERRNOS];
	int ntop = 0;
	size_t nl = 0;

	memset(&s, 0, sizeof(s));
	for (int i = 0; i < t->ncpu; i++) {
		const struct ks_sc_stat *p = &pc[i];

		s.count += p->count;
		s.errors += p->errors;
		s.total_ns += p->total_ns;
		if (p->max_ns > s.max_ns)
			s.max_ns = p->max_ns;
		for (int b = 0; b < KS_HIST_SLOTS; b++)
			s.hist[b] += p->hist[b];
	}
	if (!s.count)
		return;
	memset(percpu, 0, sizeof(*percpu) * t->ncpu);
	bpf_map_update_elem(stats_fd, &idx, percpu, BPF_ANY);

	names[0] = 0;
	for (int i = 0; i < TOP_ERRNOS && errs[nr][i].n; i++) {
		const char *en = strerrorname_np((int)errs[nr][i].err);
		char eb[16];

		if (!en) {
			snprintf(eb, sizeof(eb), "E%u", errs[nr][i].err);
			en = eb;
		}
		top_e[ntop] = errs[nr][i].err;
		top_n[ntop] = errs[nr][i].n;
		nl += snprintf(names + nl, sizeof(names) - nl, "%s%s", ntop ? "," : "", en);
		if (nl >= sizeof(names))
			nl = sizeof(names) - 1;
		ntop++;
	}
	ks_json_begin(&j, "syscall_stats", now);
	ks_json_pid_filter(t, &j);
	ks_json_u64(&j, "syscall_nr", nr);
	ks_json_str(&j, "syscall", sc_name(nr, nb, sizeof(nb)));
	ks_json_f64(&j, "interval_s", interval_s);
	ks_json_u64(&j, "count", s.count);
	ks_json_f64(&j, "calls_per_sec", interval_s > 0 ? s.count / interval_s : NAN);
	ks_json_u64(&j, "errors", s.errors);
	ks_json_u64(&j, "total_ns", s.total_ns);
	ks_json_f64(&j, "avg_ns", (double)s.total_ns / s.count);
	ks_json_u64(&j, "max_ns", s.max_ns);
	ks_json_f64(&j, "p50_ns", ks_hist_percentile((const uint64_t *)s.hist, KS_HIST_SLOTS, 0.50));
	ks_json_f64(&j, "p95_ns", ks_hist_percentile((const uint64_t *)s.hist, KS_HIST_SLOTS, 0.95));
	ks_json_f64(&j, "p99_ns", ks_hist_percentile((const uint64_t *)s.hist, KS_HIST_SLOTS, 0.99));
	ks_json_u64_array(&j, "hist_log2_ns", (const uint64_t *)s.hist, KS_HIST_SLOTS);
	ks_json_u64_array(&j, "top_errnos", top_e, ntop);
	ks_json_u64_array(&j, "top_errno_counts", top_n, ntop);
	ks_json_str(&j, "top_errno_names", names);
	ks_emit(t, &j, false);
}

/*
 * The slot's KS_SC_MAX entries, batch_n per bpf() call (BPF_MAP_LOOKUP_BATCH on
 * an array, Linux 5.6+): one lookup per syscall number was 512 bpf() calls a
 * tick, most of this tracer's CPU on an idle host.  A kernel that refuses
 * batches gets one lookup per entry, as before.
 */
static void emit_slot(struct ks_tracer *t, unsigned slot, const struct errsum (*errs)[TOP_ERRNOS],
		      double interval_s, uint64_t now)
{
	uint32_t done = 0, prev = slot * KS_SC_MAX - 1, out = 0;

	while (done < KS_SC_MAX) {
		const uint32_t want = KS_SC_MAX - done < batch_n ? KS_SC_MAX - done : batch_n;
		uint32_t n = want;
		bool last = false;

		if (batch_ok) {
			LIBBPF_OPTS(bpf_map_batch_opts, bo);
			/* in_batch is the key before the first one read: none before slot 0's first */
			void *in = done || slot ? &prev : NULL;
			int err = bpf_map_lookup_batch(stats_fd, in, &out, batch_keys, batch_vals, &n, &bo);

			if (err && errno == ENOENT) {
				last = true;  /* the map's end: n entries were read */
			} else if (err) {
				fprintf(stderr, "%s: batched map lookup refused (%s): one lookup per syscall from now on\n",
					t->producer, strerror(errno));
				batch_ok = false;
				n = want;  /* the kernel may have set it to 0 */
			}
		}
		if (!batch_ok) {
			for (uint32_t i = 0; i < n; i++) {
				batch_keys[i] = slot * KS_SC_MAX + done + i;
				if (bpf_map_lookup_elem(stats_fd, &batch_keys[i], &batch_vals[(size_t)i * t->ncpu]) != 0)
					memset(&batch_vals[(size_t)i * t->ncpu], 0, sizeof(*batch_vals) * t->ncpu);
			}
			out = slot * KS_SC_MAX + done + n - 1;
		}
		for (uint32_t i = 0; i < n; i++)
			if (batch_keys[i] / KS_SC_MAX == slot)
				emit_stat(t, batch_keys[i] % KS_SC_MAX, slot, &batch_vals[(size_t)i * t->ncpu], errs,
					  interval_s, now);
		done += n;
		prev = out;
		if (last || !n)
			break;
	}
}

static void tick(struct ks_tracer *t, double interval_s)
{
	unsigned old = skel->bss->cur_slot & 1;
	static struct errsum errs[KS_SC_MAX][TOP_ERRNOS];
	static struct errsum sums[KS_SC_MAX][ERRNOS_PER_CALL];
	static struct ks_sc_errkey dels[KS_SC_ERRNO_ENTRIES];
	static struct procerr pe[KS_SC_ERRNO_ENTRIES];
	uint64_t ev[t->ncpu];
	struct ks_sc_errkey k, nk;
	int ndel = 0, npe = 0;
	uint64_t now = ks_now_epoch_ns();

	/* Flip the slot; programs already past the slot read finish within
	 * microseconds, so a short pause makes the old slot quiescent. */
	skel->bss->cur_slot = old ^ 1;
	usleep(2000);

	/* errno counts of the old slot, per (syscall, errno, process): summed per
	 * syscall for its top TOP_ERRNOS, and kept per process for syscall_errors */
	memset(errs, 0, sizeof(errs));
	memset(sums, 0, sizeof(sums));
	if (bpf_map_get_next_key(errno_fd, NULL, &k) == 0) {
		for (;;) {
			int more = bpf_map_get_next_key(errno_fd, &k, &nk) == 0;

			if (k.idx / KS_SC_MAX == old && bpf_map_lookup_elem(errno_fd, &k, ev) == 0) {
				uint64_t n = 0;
				unsigned nr = k.idx % KS_SC_MAX;

				for (int i = 0; i < t->ncpu; i++)
					n += ev[i];
				add_errsum(sums[nr], k.err, n);
				if (npe < KS_SC_ERRNO_ENTRIES)
					pe[npe++] = (struct procerr){ .tgid = k.tgid, .nr = nr, .err = k.err, .n = n,
								      .cgroup_id = k.cgroup_id };
				if (ndel < KS_SC_ERRNO_ENTRIES)
					dels[ndel++] = k;
			}
			if (!more)
				break;
			k = nk;
		}
	}
	for (unsigned nr = 0; nr < KS_SC_MAX; nr++) {
		for (int e = 0; e < ERRNOS_PER_CALL && sums[nr][e].n; e++) {
			for (int i = 0; i < TOP_ERRNOS; i++) {
				if (sums[nr][e].n > errs[nr][i].n) {
					memmove(&errs[nr][i + 1], &errs[nr][i], (TOP_ERRNOS - 1 - i) * sizeof(errs[0][0]));
					errs[nr][i] = sums[nr][e];
					break;
				}
			}
		}
	}
	for (int i = 0; i < ndel; i++)
		bpf_map_delete_elem(errno_fd, &dels[i]);

	emit_slot(t, old, (const struct errsum (*)[TOP_ERRNOS])errs, interval_s, now);
	emit_proc_errors(t, pe, npe, interval_s, now);
}

static struct bpf_object_skeleton *open_skel(void)
{
	skel = syscall_bpf__open();
	return skel ? skel->skeleton : NULL;
}

static int configure(struct ks_tracer *t)
{
	/* sched_switch parks the in-flight syscall of a thread leaving its CPU
	 * (see syscall.bpf.c); same attach mechanism as the syscall hooks. */
	if (!ks_tp_exists("sched", "sched_switch") || (t->tp_btf && !ks_probe_tp_btf("sched_switch"))) {
		fprintf(stderr, "%s: tracepoint sched:sched_switch is missing or cannot be attached as %s\n", t->producer,
			t->attach_mode);
		return -1;
	}
	skel->rodata->min_lat_ns = (uint64_t)(min_latency_ms * 1e6);
	if (!slow_skip_set)
		set_slow_skip(SLOW_EXCLUDE_DEFAULT, false);
	memcpy((void *)skel->rodata->slow_skip, slow_skip, sizeof(slow_skip));
	for (size_t i = 0; i < sizeof(FD_ARG0_CALLS) / sizeof(FD_ARG0_CALLS[0]); i++) {
		int nr = sc_nr(FD_ARG0_CALLS[i]);
		if (nr >= 0 && nr < KS_SC_MAX) /* older headers may lack the newest calls */
			((uint64_t *)skel->rodata->fd_arg0)[nr / 64] |= 1ULL << (nr % 64);
	}
	return 0;
}

static int start(struct ks_tracer *t)
{
	percpu = ks_calloc_percpu(t, sizeof(*percpu));
	/* a batch's values in at most 1 MiB (sizeof is a multiple of 8, as the kernel lays them out) */
	batch_n = (1u << 20) / ((t->ncpu > 0 ? (uint32_t)t->ncpu : 1) * sizeof(*percpu));
	batch_n = batch_n < 1 ? 1 : batch_n > KS_SC_MAX ? KS_SC_MAX : batch_n;
	batch_vals = calloc((size_t)batch_n * (t->ncpu > 0 ? t->ncpu : 1), sizeof(*batch_vals));
	batch_keys = calloc(batch_n, sizeof(*batch_keys));
	if (!percpu || !batch_vals || !batch_keys) {
		fprintf(stderr, "%s: out of memory\n", t->producer);
		return -1;
	}
	stats_fd = bpf_map__fd(skel->maps.sc_stats);
	errno_fd = bpf_map__fd(skel->maps.sc_errnos);
	snprintf(t->notes, sizeof(t->notes),
		 "min_latency_ms=%g; slow-call lines leave out %d syscalls (--slow-exclude); histograms log2(ns), last "
		 "bucket open-ended; percentiles linear within a log2 bucket; start times in a per-CPU slot, parked in "
		 "task storage when a task is switched out mid-call",
		 min_latency_ms, n_slow_skip);
	snprintf(t->detail, sizeof(t->detail), "min_latency_ms=%g, slow_exclude=%d syscalls, pid=%d", min_latency_ms,
		 n_slow_skip, t->opts->pid);
	return 0;
}

static void close_skel(void)
{
	syscall_bpf__destroy(skel);
	free(percpu);
	free(batch_vals);
	free(batch_keys);
}

static const struct ks_tracer_desc desc = {
	.name = "syscall",
	.doc = "ks-syscall: syscall latency and errors (raw_syscalls tracepoints), JSON lines.",
	.options = options,
	.parse = parse,
	.tp_category = "raw_syscalls",
	.tps = { "sys_enter", "sys_exit" },
	.fallback = "tracepoint",
	.open = open_skel,
	.configure = configure,
	.start = start,
	.tick = tick,
	.on_event = on_event,
	.close = close_skel,
};

int main(int argc, char **argv)
{
	return ks_tracer_main(&desc, argc, argv);
}
