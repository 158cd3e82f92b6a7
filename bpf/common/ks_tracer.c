// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "ks_tracer.h"

#include <errno.h>
#include <linux/capability.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>

volatile int ks_stop;
static int ks_verbose;

enum { OPT_INTERVAL = 0x1000, OPT_DURATION, OPT_OUTPUT, OPT_PID, OPT_EXCL, OPT_ATTACH };

static const struct argp_option common_options[] = {
	{ "interval", OPT_INTERVAL, "SEC", 0, "Seconds between stats lines (default 1)", 0 },
	{ "duration", OPT_DURATION, "SEC", 0, "Stop after SEC seconds (default 0 = until SIGINT/SIGTERM)", 0 },
	{ "output", OPT_OUTPUT, "PATH", 0, "'-' = stdout (default), else a FIFO such as /tmp/kernelsight", 0 },
	{ "pid", OPT_PID, "PID", 0, "Trace only this process (tgid)", 0 },
	{ "exclude-pid", OPT_EXCL, "PID", 0, "Never trace this process (repeatable, up to 8)", 0 },
	{ "attach", OPT_ATTACH, "MODE", 0, "auto (default: tp_btf, else tracepoint), tp_btf or tracepoint", 0 },
	{ "verbose", 'v', NULL, 0, "Log libbpf debug output to stderr", 0 },
	{ 0 },
};

double ks_parse_double(const char *prog, const char *opt, const char *s, double min, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < min || v > max) {
		fprintf(stderr, "%s: invalid %s '%s' (expected a number from %g to %g)\n", prog, opt, s, min, max);
		exit(2);
	}
	return v;
}

long ks_parse_long(const char *prog, const char *opt, const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "%s: invalid %s '%s' (expected an integer from %ld to %ld)\n", prog, opt, s, min, max);
		exit(2);
	}
	return v;
}

static error_t common_parse(int key, char *arg, struct argp_state *st)
{
	struct ks_tracer_opts *o = st->input;
	const char *prog = program_invocation_short_name;

	switch (key) {
	case ARGP_KEY_INIT:
		if (!o->output)
			o->output = "-";
		if (o->interval_s <= 0)
			o->interval_s = 1.0;
		if (!o->attach)
			o->attach = "auto";
		break;
	case OPT_INTERVAL:
		o->interval_s = ks_parse_double(prog, "--interval", arg, 0.05, 86400);
		break;
	case OPT_DURATION:
		o->duration_s = ks_parse_double(prog, "--duration", arg, 0, 1e9);
		break;
	case OPT_OUTPUT:
		if (!*arg) {
			fprintf(stderr, "%s: --output needs a path or '-'\n", prog);
			exit(2);
		}
		o->output = arg;
		break;
	case OPT_PID:
		o->pid = (int)ks_parse_long(prog, "--pid", arg, 1, 0x3fffffff);
		break;
	case OPT_EXCL:
		if (o->n_excl >= KS_MAX_EXCL) {
			fprintf(stderr, "%s: at most %d --exclude-pid options\n", prog, KS_MAX_EXCL);
			exit(2);
		}
		o->excl[o->n_excl++] = (int)ks_parse_long(prog, "--exclude-pid", arg, 1, 0x3fffffff);
		break;
	case OPT_ATTACH:
		if (strcmp(arg, "auto") && strcmp(arg, "tp_btf") && strcmp(arg, "tracepoint")) {
			fprintf(stderr, "%s: invalid --attach '%s' (expected auto, tp_btf or tracepoint)\n", prog, arg);
			exit(2);
		}
		o->attach = arg;
		break;
	case 'v':
		o->verbose = 1;
		break;
	default:
		return ARGP_ERR_UNKNOWN;
	}
	return 0;
}

const struct argp ks_common_argp = { common_options, common_parse, NULL, NULL, NULL, NULL, NULL };

void ks_argp_parse(const struct argp *argp, int argc, char **argv, void *input)
{
	argp_err_exit_status = 2;
	if (argp_parse(argp, argc, argv, 0, NULL, input) != 0)
		exit(2);
}

int ks_warn(struct ks_tracer *t, const char *fmt, ...)
{
	va_list ap;

	t->warnings++;
	fprintf(stderr, "%s: warning: ", t->producer);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 0;
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level == LIBBPF_DEBUG && !ks_verbose)
		return 0;
	if (level == LIBBPF_INFO && !ks_verbose)
		return 0;
	return vfprintf(stderr, fmt, args);
}

static void on_signal(int sig)
{
	(void)sig;
	ks_stop = 1;
}

static bool have_bpf_caps(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	if (geteuid() == 0)
		return true;
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) != 0)
		return false;
#define HAS(c) (d[(c) / 32].effective & (1u << ((c) % 32)))
	return (HAS(39) && HAS(38)) || HAS(21); /* CAP_BPF+CAP_PERFMON, or CAP_SYS_ADMIN */
#undef HAS
}

int ks_tracer_init(struct ks_tracer *t, const char *name, struct ks_tracer_opts *opts)
{
	static char producer[64];
	char err[256];
	struct sigaction sa;

	memset(t, 0, sizeof(*t));
	snprintf(producer, sizeof(producer), "ks-%s", name);
	for (char *p = producer; *p; p++)
		if (*p == '_')
			*p = '-';
	t->name = name;
	t->producer = producer;
	t->opts = opts;
	t->counters_fd = -1;
	ks_verbose = opts->verbose;
	libbpf_set_print(libbpf_print);

	if (!have_bpf_caps()) {
		fprintf(stderr, "%s: must run as root (needs CAP_BPF and CAP_PERFMON to load eBPF programs)\n", producer);
		return -1;
	}
	if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
		fprintf(stderr, "%s: kernel BTF /sys/kernel/btf/vmlinux not found: CO-RE tracers need CONFIG_DEBUG_INFO_BTF=y\n", producer);
		return -1;
	}
	if (ks_out_open(&t->out, opts->output, 0, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", producer, err);
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	t->epoch_off_ns = ks_mono_to_epoch_offset_ns();
	return 0;
}

bool ks_tracefs_ok(void)
{
	return access("/sys/kernel/tracing/events", R_OK) == 0 ||
	       access("/sys/kernel/debug/tracing/events", R_OK) == 0;
}

bool ks_tp_exists(const char *category, const char *name)
{
	char path[256];
	struct btf *btf;
	bool ok = false;

	snprintf(path, sizeof(path), "/sys/kernel/tracing/events/%s/%s", category, name);
	if (access(path, F_OK) == 0)
		return true;
	snprintf(path, sizeof(path), "/sys/kernel/debug/tracing/events/%s/%s", category, name);
	if (access(path, F_OK) == 0)
		return true;
	btf = btf__load_vmlinux_btf();
	if (btf) {
		snprintf(path, sizeof(path), "btf_trace_%s", name);
		ok = btf__find_by_name_kind(btf, path, BTF_KIND_TYPEDEF) > 0;
		btf__free(btf);
	}
	return ok;
}

/* r0 = 0; exit */
static const struct bpf_insn ret0[] = {
	{ .code = 0xb7, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0 },
	{ .code = 0x95, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0 },
};

static int probe_tracing(const char *btf_name, int kind, enum bpf_attach_type type)
{
	struct btf *btf = btf__load_vmlinux_btf();
	int id, fd, lfd, ret;

	if (!btf)
		return -ENOENT;
	id = btf__find_by_name_kind(btf, btf_name, kind);
	btf__free(btf);
	if (id <= 0)
		return -ENOENT;
	LIBBPF_OPTS(bpf_prog_load_opts, lo, .expected_attach_type = type, .attach_btf_id = id);
	fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, NULL, "GPL", ret0, 2, &lo);
	if (fd < 0)
		return -errno;
	lfd = bpf_raw_tracepoint_open(NULL, fd);
	ret = lfd < 0 ? -errno : 0;
	if (lfd >= 0)
		close(lfd);
	close(fd);
	return ret;
}

bool ks_probe_tp_btf(const char *name)
{
	char tn[128];

	snprintf(tn, sizeof(tn), "btf_trace_%s", name);
	return probe_tracing(tn, BTF_KIND_TYPEDEF, BPF_TRACE_RAW_TP) == 0;
}

bool ks_probe_fexit(const char *func, int *err)
{
	int r = probe_tracing(func, BTF_KIND_FUNC, BPF_TRACE_FEXIT);

	if (err)
		*err = r;
	return r == 0;
}

void ks_fill_filter(const struct ks_tracer_opts *o, volatile uint32_t *self, volatile uint32_t *targ,
		    volatile uint32_t *n_excl, volatile uint32_t *excl)
{
	*self = (uint32_t)getpid();
	*targ = (uint32_t)o->pid;
	*n_excl = (uint32_t)o->n_excl;
	for (int i = 0; i < o->n_excl && i < KS_MAX_EXCL; i++)
		excl[i] = (uint32_t)o->excl[i];
}

int ks_emit(struct ks_tracer *t, struct ks_json *j, bool is_stats)
{
	int r;

	if (ks_json_end(j) != 0) {
		t->out.c.dropped_oversize++;
		return -1;
	}
	r = ks_out_write_line(&t->out, j->buf, j->len);
	if (r == -2) {
		t->stopped_by_epipe = 1;
		ks_stop = 1;
	}
	if (r == 0 && !is_stats)
		t->data_lines++;
	return r;
}

static void read_counters(struct ks_tracer *t, uint64_t *sum)
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t vals[ncpu > 0 ? ncpu : 1];

	for (uint32_t k = 0; k < KS_CNT_MAX; k++) {
		sum[k] = 0;
		if (t->counters_fd < 0 || ncpu <= 0)
			continue;
		if (bpf_map_lookup_elem(t->counters_fd, &k, vals) == 0)
			for (int c = 0; c < ncpu; c++)
				sum[k] += vals[c];
	}
}

void ks_emit_stats(struct ks_tracer *t, double interval_s)
{
	uint64_t now = ks_now_epoch_ns();
	uint64_t cur[KS_CNT_MAX];
	struct ks_json j;
	struct ks_out_counters *c = &t->out.c;

	read_counters(t, cur);
	ks_json_begin(&j, "tracer_stats", now);
	ks_json_str(&j, "tracer", t->name);
	ks_json_str(&j, "attach_mode", t->attach_mode);
	ks_json_f64(&j, "interval_s", interval_s);
	ks_json_u64(&j, "events_emitted", t->data_lines - t->data_lines_prev);
	ks_json_u64(&j, "ringbuf_drops", cur[KS_CNT_RB_DROP] - t->cnt_prev[KS_CNT_RB_DROP]);
	ks_json_u64(&j, "map_full_errors", cur[KS_CNT_MAP_FULL] - t->cnt_prev[KS_CNT_MAP_FULL]);
	ks_json_u64(&j, "events_emitted_total", t->data_lines);
	ks_json_u64(&j, "ringbuf_drops_total", cur[KS_CNT_RB_DROP]);
	ks_json_u64(&j, "map_full_errors_total", cur[KS_CNT_MAP_FULL]);
	ks_json_str(&j, "notes", t->notes);
	t->data_lines_prev = t->data_lines;
	memcpy(t->cnt_prev, cur, sizeof(cur));
	ks_emit(t, &j, true);

	ks_json_begin(&j, "producer_stats", ks_now_epoch_ns());
	ks_json_str(&j, "producer", t->producer);
	ks_json_u64(&j, "pid", (uint64_t)getpid());
	ks_json_u64(&j, "lines_written_total", c->lines_written);
	ks_json_u64(&j, "dropped_no_reader_total", c->dropped_no_reader);
	ks_json_u64(&j, "dropped_full_total", c->dropped_full);
	ks_json_u64(&j, "dropped_oversize_total", c->dropped_oversize);
	ks_json_u64(&j, "write_errors_total", c->write_errors);
	ks_json_u64(&j, "warnings_total", t->warnings);
	ks_emit(t, &j, true);
}

int ks_run(struct ks_tracer *t, struct ring_buffer *rb, ks_tick_fn tick, void *ctx)
{
	uint64_t start = ks_now_mono_ns();
	uint64_t ival = (uint64_t)(t->opts->interval_s * 1e9);
	uint64_t end = t->opts->duration_s > 0 ? start + (uint64_t)(t->opts->duration_s * 1e9) : 0;
	uint64_t next = start + ival, last = start;
	int err = 0;

	while (!ks_stop) {
		uint64_t now = ks_now_mono_ns();
		uint64_t wake = next;
		int ms;

		if (end && end < wake)
			wake = end;
		if (now >= wake) {
			if (end && now >= end)
				break;
			tick(t, ctx, (now - last) / 1e9);
			ks_emit_stats(t, (now - last) / 1e9);
			last = now;
			while (next <= now)
				next += ival;
			continue;
		}
		ms = (int)((wake - now + 999999) / 1000000);
		if (ms > 200)
			ms = 200;
		if (rb) {
			int r = ring_buffer__poll(rb, ms);

			if (r < 0 && r != -EINTR) {
				fprintf(stderr, "%s: ring buffer poll failed: %s\n", t->producer, strerror(-r));
				err = -1;
				break;
			}
		} else {
			struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

			nanosleep(&ts, NULL);
		}
	}
	/* last partial interval, then the closing stats lines */
	if (rb)
		ring_buffer__consume(rb);
	if (!t->stopped_by_epipe) {
		uint64_t now = ks_now_mono_ns();

		tick(t, ctx, (now - last) / 1e9);
		ks_emit_stats(t, (now - last) / 1e9);
	}
	return err;
}

void ks_tracer_close(struct ks_tracer *t)
{
	ks_out_close(&t->out);
}

double ks_hist_percentile(const uint64_t *h, int n, double p)
{
	uint64_t total = 0, cum = 0;
	double rank;

	for (int i = 0; i < n; i++)
		total += h[i];
	if (!total)
		return NAN;
	rank = p * (double)total;
	for (int i = 0; i < n; i++) {
		if (!h[i])
			continue;
		if ((double)(cum + h[i]) >= rank) {
			double lo = i == 0 ? 0.0 : ldexp(1.0, i);
			double hi = ldexp(1.0, i + 1);
			double frac = (rank - (double)cum) / (double)h[i];

			if (frac < 0)
				frac = 0;
			return lo + (hi - lo) * frac;
		}
		cum += h[i];
	}
	return ldexp(1.0, n);
}

int ks_choose_mode(struct ks_tracer *t, const char *cat, const char *const *names, int n,
		   const char *fallback_label)
{
	const char *want = t->opts->attach ? t->opts->attach : "auto";
	bool btf_ok = true, tp_ok = ks_tracefs_ok();

	for (int i = 0; i < n; i++) {
		if (!ks_tp_exists(cat, names[i])) {
			fprintf(stderr, "%s: tracepoint %s:%s is missing on this kernel\n", t->producer, cat, names[i]);
			return -1;
		}
	}
	if (strcmp(want, "tracepoint") != 0)
		for (int i = 0; i < n && btf_ok; i++)
			btf_ok = ks_probe_tp_btf(names[i]);
	else
		btf_ok = false;
	if (btf_ok)
		return 1;
	if (strcmp(want, "tp_btf") == 0) {
		fprintf(stderr, "%s: --attach tp_btf requested but tp_btf programs cannot be attached here\n", t->producer);
		return -1;
	}
	if (!tp_ok && strcmp(fallback_label, "raw_tp") != 0) {
		fprintf(stderr, "%s: tp_btf unavailable and tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)\n",
			t->producer);
		return -1;
	}
	return 0;
}
