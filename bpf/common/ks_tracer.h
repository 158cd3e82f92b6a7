/* SPDX-License-Identifier: MIT */
/*
 * ks_tracer: the user-space side every KernelSight eBPF loader shares:
 * ks_tracer_main() with the common argp options, pre-flight checks
 * (root/CAP_BPF, BTF, tracepoints), attach-mode probing (tp_btf / tracepoint /
 * fexit), load and attach, the --exclude-pids-file sync, the interval loop
 * with clean SIGINT/SIGTERM exit, and the tracer_stats + producer_stats
 * lines.  A loader keeps only its own options, rodata, per-interval work and
 * line formatting.
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
	const char *excl_file; /* --exclude-pids-file, NULL = none */
	int verbose;           /* -v */
	const char *attach;    /* --attach auto|tp_btf|tracepoint (testing the fallback) */
};

/* Parse a number or exit(2) with a one-line message naming the option. */
double ks_parse_double(const char *prog, const char *opt, const char *s, double min, double max);
long ks_parse_long(const char *prog, const char *opt, const char *s, long min, long max);

struct ks_tracer {
	const char *name;          /* "syscall" */
	const char *producer;      /* "ks-syscall" */
	struct ks_tracer_opts *opts;
	struct ks_out out;
	int64_t epoch_off_ns;      /* add to bpf_ktime_get_ns() to get Unix epoch ns */
	int ncpu;                  /* libbpf_num_possible_cpus(): per-CPU map values */
	bool tp_btf;               /* attach mode chosen: tp_btf, else the fallback */
	char attach_mode[96];
	char notes[512];
	char detail[640];          /* rest of the "attached (attach_mode=..., " line; default pid=N */
	uint64_t warnings;
	uint64_t data_lines;       /* data lines written (all but stats lines) */
	uint64_t data_lines_prev;
	uint64_t cnt_prev[KS_CNT_MAX];
	int counters_fd;           /* ks_counters map */
	int stopped_by_epipe;
};

#define KS_MAX_TPS 8

/*
 * What a loader says about itself; ks_tracer_main() does the rest: argument
 * parsing, pre-flight checks, attach-mode choice, program selection, load,
 * attach, ring buffer, the interval loop and cleanup.  The BPF object pairs
 * each SEC("tp_btf/...") program with a SEC("tracepoint/...") or
 * SEC("raw_tp/...") twin; only the chosen mode's programs are loaded.
 */
struct ks_tracer_desc {
	const char *name;                  /* "io_latency": executable ks-io-latency */
	const char *doc;                   /* --help text */
	const struct argp_option *options; /* the tracer's own options, or NULL */
	argp_parser_t parse;               /* its keys; ARGP_ERR_UNKNOWN for the rest */
	const char *tp_category;           /* "block": tracepoints tps[] live there */
	const char *tps[KS_MAX_TPS];       /* probed for tp_btf; NULL-terminated */
	const char *fallback;              /* attach_mode without tp_btf: "tracepoint" or "raw_tp" */
	bool fallback_only;                /* the object has no tp_btf programs: never probe tp_btf */
	/* NAME_bpf__open(), keeping the skeleton; NULL with errno set */
	struct bpf_object_skeleton *(*open)(void);
	/* before load: own rodata, extra checks; -1 after one message (the pid
	 * filter is filled already) */
	int (*configure)(struct ks_tracer *t);
	/* after attach: map fds, buffers, notes, detail; -1 after one message */
	int (*start)(struct ks_tracer *t);
	/* every --interval and once at exit, with the interval's length */
	void (*tick)(struct ks_tracer *t, double interval_s);
	/* per-event lines from the "events" ring buffer (ctx = the tracer), or NULL */
	ring_buffer_sample_fn on_event;
	/* NAME_bpf__destroy() and free what start() allocated; runs on every exit */
	void (*close)(void);
};

/* The whole life of a loader; returns the exit code (usage errors exit 2). */
int ks_tracer_main(const struct ks_tracer_desc *d, int argc, char **argv);

/* Does tracepoint category:name exist (BTF typedef or tracefs)? */
bool ks_tp_exists(const char *category, const char *name);
/* Can a tp_btf program really be loaded and attached to name here? */
bool ks_probe_tp_btf(const char *name);
/* Can an fexit program be attached to kernel function func?  *err = -errno */
bool ks_probe_fexit(const char *func, int *err);

/* One value per possible CPU (a per-CPU map lookup); NULL after one message. */
void *ks_calloc_percpu(struct ks_tracer *t, size_t value_size);

/* Write one built line; counts it as data unless is_stats.  Returns -2 on EPIPE. */
int ks_emit(struct ks_tracer *t, struct ks_json *j, bool is_stats);
/* "pid": the --pid filter, or null for all processes */
void ks_json_pid_filter(struct ks_tracer *t, struct ks_json *j);

/* log2 histogram (bucket i = [2^i, 2^(i+1)), bucket 0 = [0, 2)) percentile,
 * linear interpolation inside the bucket; NaN when empty. */
double ks_hist_percentile(const uint64_t *h, int n, double p);

int ks_warn(struct ks_tracer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
