/* SPDX-License-Identifier: MIT */
/*
 * ks_tracer: the user-space side every KernelSight eBPF loader shares:
 * common argp options, pre-flight checks (root/CAP_BPF, BTF, tracepoints),
 * attach-mode probing (tp_btf / tracepoint / fexit), the interval loop with
 * clean SIGINT/SIGTERM exit, and the tracer_stats + producer_stats lines.
 */
#ifndef KS_TRACER_H
#define KS_TRACER_H

#include <argp.h>
#include <stdbool.h>
#include <stdint.h>

#include <bpf/libbpf.h>

#include "ks_json.h"
#include "ks_out.h"
#include "ks_shared.h"

struct ks_tracer_opts {
	double interval_s;     /* --interval, default 1 */
	double duration_s;     /* --duration, 0 = until signal */
	const char *output;    /* --output, "-" = stdout */
	int pid;               /* --pid, 0 = all */
	int excl[KS_MAX_EXCL]; /* --exclude-pid */
	int n_excl;
	int verbose;           /* -v */
	const char *attach;    /* --attach auto|tp_btf|tracepoint (testing the fallback) */
};

/* Add as an argp child: { &ks_common_argp, 0, NULL, 0 } with input = &opts. */
extern const struct argp ks_common_argp;

/* Parse a number or exit(2) with a one-line message naming the option. */
double ks_parse_double(const char *prog, const char *opt, const char *s, double min, double max);
long ks_parse_long(const char *prog, const char *opt, const char *s, long min, long max);
/* argp entry that exits 2 (not 64) on usage errors */
void ks_argp_parse(const struct argp *argp, int argc, char **argv, void *input);

struct ks_tracer {
	const char *name;          /* "syscall" */
	const char *producer;      /* "ks-syscall" */
	struct ks_tracer_opts *opts;
	struct ks_out out;
	int64_t epoch_off_ns;      /* add to bpf_ktime_get_ns() to get Unix epoch ns */
	char attach_mode[96];
	char notes[512];
	uint64_t warnings;
	uint64_t data_lines;       /* data lines written (all but stats lines) */
	uint64_t data_lines_prev;
	uint64_t cnt_prev[KS_CNT_MAX];
	uint64_t cnt_total[KS_CNT_MAX];
	int counters_fd;           /* ks_counters map */
	uint64_t interval_start_mono;
	int stopped_by_epipe;
};

/* Checks root/CAP_BPF and BTF, opens the output, sets up signals and libbpf
 * logging.  Returns 0, or -1 after printing one line to stderr. */
int ks_tracer_init(struct ks_tracer *t, const char *name, struct ks_tracer_opts *opts);

/* Does tracepoint category:name exist (BTF typedef or tracefs)? */
bool ks_tp_exists(const char *category, const char *name);
/* Can a tp_btf program really be loaded and attached to name here? */
bool ks_probe_tp_btf(const char *name);
/* Can an fexit program be attached to kernel function func?  *err = -errno */
bool ks_probe_fexit(const char *func, int *err);
/* Is a tracefs events directory available (for plain tracepoints)? */
bool ks_tracefs_ok(void);

/*
 * Pick the attach mode for tracepoints cat:names[0..n): "tp_btf" when every
 * one loads+attaches as tp_btf, else the classic tracepoint (fallback_label)
 * when tracefs has them all.  Honours --attach.  Returns 1 = tp_btf,
 * 0 = fallback, -1 = error (one line printed).
 */
int ks_choose_mode(struct ks_tracer *t, const char *cat, const char *const *names, int n,
		   const char *fallback_label);

/* Fill the pid-filter rodata of a skeleton (arrays of KS_MAX_EXCL). */
void ks_fill_filter(const struct ks_tracer_opts *o, volatile uint32_t *self, volatile uint32_t *targ,
		    volatile uint32_t *n_excl, volatile uint32_t *excl);

/* Write one built line; counts it as data unless is_stats.  Returns -2 on EPIPE. */
int ks_emit(struct ks_tracer *t, struct ks_json *j, bool is_stats);
/* Per-interval health lines (tracer_stats then producer_stats). */
void ks_emit_stats(struct ks_tracer *t, double interval_s);

/*
 * Run until --duration or a signal: poll rb (may be NULL) and call tick()
 * every --interval with the interval's length; tick() also runs once at exit.
 */
typedef void (*ks_tick_fn)(struct ks_tracer *t, void *ctx, double interval_s);
int ks_run(struct ks_tracer *t, struct ring_buffer *rb, ks_tick_fn tick, void *ctx);

void ks_tracer_close(struct ks_tracer *t);

/* log2 histogram (bucket i = [2^i, 2^(i+1)), bucket 0 = [0, 2)) percentile,
 * linear interpolation inside the bucket; NaN when empty. */
double ks_hist_percentile(const uint64_t *h, int n, double p);

int ks_warn(struct ks_tracer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern volatile int ks_stop;

#endif
