// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "ks_tracer.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <math.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
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

static volatile int ks_stop;
static int ks_verbose;
static struct ks_tracer_opts ks_opts;
static char ks_producer[64];

enum { OPT_INTERVAL = 0x1000, OPT_DURATION, OPT_OUTPUT, OPT_PID, OPT_EXCL, OPT_EXCL_FILE, OPT_ATTACH };

static const struct argp_option common_options[] = {
	{ "interval", OPT_INTERVAL, "SEC", 0, "Seconds between stats lines (default 1)", 0 },
	{ "duration", OPT_DURATION, "SEC", 0, "Stop after SEC seconds (default 0 = until SIGINT/SIGTERM)", 0 },
	{ "output", OPT_OUTPUT, "PATH", 0, "'-' = stdout (default), else a FIFO such as /tmp/kernelsight", 0 },
	{ "pid", OPT_PID, "PID", 0, "Trace only this process (tgid)", 0 },
	{ "exclude-pid", OPT_EXCL, "PID", 0, "Never trace this process (repeatable, up to 8)", 0 },
	{ "exclude-pids-file", OPT_EXCL_FILE, "PATH", 0,
	  "Never trace the processes listed in PATH (one decimal pid per line, up to 256), re-read every --interval "
	  "when it changes; a missing file excludes nothing", 0 },
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

/* A non-empty path or exit(2). */
static const char *path_arg(const char *prog, const char *opt, const char *arg, const char *alt)
{
	if (!*arg) {
		fprintf(stderr, "%s: %s needs a path%s\n", prog, opt, alt);
		exit(2);
	}
	return arg;
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
		o->output = path_arg(prog, "--output", arg, " or '-'");
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
	case OPT_EXCL_FILE:
		o->excl_file = path_arg(prog, "--exclude-pids-file", arg, "");
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

static const struct argp common_argp = { common_options, common_parse, NULL, NULL, NULL, NULL, NULL };

/* The tracer's own options at the top level (as its --help lists them), the
 * common ones as a child; st->input is the tracer's description. */
static error_t tracer_parse(int key, char *arg, struct argp_state *st)
{
	const struct ks_tracer_desc *d = st->input;

	switch (key) {
	case ARGP_KEY_INIT:
		st->child_inputs[0] = &ks_opts;
		return 0;
	case ARGP_KEY_ARG:
		fprintf(stderr, "%s: unexpected argument '%s'\n", ks_producer, arg);
		exit(2);
	default:
		return d->parse ? d->parse(key, arg, st) : ARGP_ERR_UNKNOWN;
	}
}

/* exits 2 (not argp's 64) on usage errors */
static void parse_args(const struct ks_tracer_desc *d, int argc, char **argv)
{
	static const struct argp_child children[] = { { &common_argp, 0, NULL, 0 }, { 0 } };
	const struct argp argp = { d->options, tracer_parse, NULL, d->doc, children, NULL, NULL };

	argp_err_exit_status = 2;
	if (argp_parse(&argp, argc, argv, 0, NULL, (void *)d) != 0)
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

/* NULL when the effective capabilities can load and attach the tracer, else the
 * capabilities missing: CAP_BPF creates the maps and loads the programs,
 * CAP_PERFMON attaches them to tracepoints (CAP_SYS_ADMIN alone covers both). */
static const char *missing_bpf_caps(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	bool bpf, perfmon;

	if (geteuid() == 0)
		return NULL;
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) != 0)
		return "CAP_BPF and CAP_PERFMON";
#define HAS(c) (d[(c) / 32].effective & (1u << ((c) % 32)))
	if (HAS(21)) /* CAP_SYS_ADMIN */
		return NULL;
	bpf = HAS(39);
	perfmon = HAS(38);
#undef HAS
	if (bpf && perfmon)
		return NULL;
	return !bpf && !perfmon ? "CAP_BPF and CAP_PERFMON" : !bpf ? "CAP_BPF" : "CAP_PERFMON";
}

/* "io_latency" -> "ks-io-latency", the executable's name */
static void set_producer(const char *name)
{
	snprintf(ks_producer, sizeof(ks_producer), "ks-%s", name);
	for (char *p = ks_producer; *p; p++)
		if (*p == '_')
			*p = '-';
}

/* Checks root/CAP_BPF and BTF, opens the output, sets up signals and libbpf
 * logging.  Returns 0, or -1 after printing one line to stderr. */
static int tracer_init(struct ks_tracer *t, const char *name, struct ks_tracer_opts *opts)
{
	const char *producer = ks_producer;
	const char *missing;
	char err[256];
	struct sigaction sa;

	memset(t, 0, sizeof(*t));
	t->name = name;
	t->producer = producer;
	t->opts = opts;
	t->counters_fd = -1;
	t->ncpu = libbpf_num_possible_cpus();
	ks_verbose = opts->verbose;
	libbpf_set_print(libbpf_print);

	missing = missing_bpf_caps();
	if (missing) {
		fprintf(stderr, "%s: missing %s: run as root, or grant CAP_BPF (maps, program load) and CAP_PERFMON "
			"(tracepoint attach), e.g. AmbientCapabilities= in a systemd unit\n", producer, missing);
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

static bool tracefs_ok(void)
{
	return access("/sys/kernel/tracing/events", R_OK) == 0 ||
	       access("/sys/kernel/debug/tracing/events", R_OK) == 0;
}

/*
 * The kernel's BTF for the start-up probes below (ks_tp_exists, ks_probe_*):
 * parsed once (about 2x the size of /sys/kernel/btf/vmlinux in heap, tens of
 * ms of CPU) however many tracepoints are probed, and freed by
 * probe_btf_release() before libbpf loads its own copy for CO-RE, so no two
 * copies are ever live together.
 */
static struct btf *probe_btf;
static bool probe_btf_tried;

static const struct btf *vmlinux_btf(void)
{
	if (!probe_btf_tried) {
		probe_btf = btf__load_vmlinux_btf();
		probe_btf_tried = true;
	}
	return probe_btf;
}

static void probe_btf_release(void)
{
	btf__free(probe_btf);
	probe_btf = NULL;
	probe_btf_tried = false;
}

bool ks_tp_exists(const char *category, const char *name)
{
	char path[256];
	const struct btf *btf;

	snprintf(path, sizeof(path), "/sys/kernel/tracing/events/%s/%s", category, name);
	if (access(path, F_OK) == 0)
		return true;
	snprintf(path, sizeof(path), "/sys/kernel/debug/tracing/events/%s/%s", category, name);
	if (access(path, F_OK) == 0)
		return true;
	btf = vmlinux_btf();
	if (!btf)
		return false;
	snprintf(path, sizeof(path), "btf_trace_%s", name);
	return btf__find_by_name_kind(btf, path, BTF_KIND_TYPEDEF) > 0;
}

/* r0 = 0; exit */
static const struct bpf_insn ret0[] = {
	{ .code = 0xb7, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0 },
	{ .code = 0x95, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0 },
};

static int probe_tracing(const char *btf_name, int kind, enum bpf_attach_type type)
{
	const struct btf *btf = vmlinux_btf();
	int id, fd, lfd, ret;

	if (!btf)
		return -ENOENT;
	id = btf__find_by_name_kind(btf, btf_name, kind);
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

/* The pid filter of ks_common.bpf.h, before load. */
static int fill_filter(struct ks_tracer *t, struct bpf_object *obj)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata.ks_filter");
	struct ks_filter f = { .self_tgid = (uint32_t)getpid(), .targ_tgid = (uint32_t)t->opts->pid };

	f.n_excl = (uint32_t)t->opts->n_excl;
	for (int i = 0; i < t->opts->n_excl && i < KS_MAX_EXCL; i++)
		f.excl_tgid[i] = (uint32_t)t->opts->excl[i];
	if (!map || bpf_map__set_initial_value(map, &f, sizeof(f)) != 0) {
		fprintf(stderr, "%s: BPF object has no pid filter (.rodata.ks_filter from ks_common.bpf.h)\n", t->producer);
		return -1;
	}
	return 0;
}

/*
 * --exclude-pids-file.  The supervisor replaces the file (rename) whenever one
 * of its children starts or exits, so the pids to skip change while we run.
 * At start and every interval, when the file's identity or mtime changed, the
 * map ks_excl_pids and its prefilter ks_excl_bits are made to match it: new
 * pids added, then the bits, then stale pids deleted, so a pid listed before
 * and after stays excluded throughout.
 */
enum excl_state { EXCL_UNKNOWN, EXCL_MISSING, EXCL_UNREADABLE, EXCL_READ };

static struct {
	int map_fd;              /* ks_excl_pids */
	int bits_fd;             /* .data.ks_excl, holding ks_excl_bits */
	enum excl_state state;
	struct stat st;          /* of the version read, with EXCL_READ */
	uint32_t n;              /* pids in the map */
} ks_excl = { .map_fd = -1, .bits_fd = -1 };

static bool same_version(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static bool has_pid(const uint32_t *pids, int n, uint32_t pid)
{
	for (int i = 0; i < n; i++)
		if (pids[i] == pid)
			return true;
	return false;
}

/* Distinct pids of f into pids[]; bad lines and pids past KS_MAX_EXCL_FILE
 * are skipped with one warning each per version of the file. */
static int read_pids(struct ks_tracer *t, FILE *f, uint32_t *pids)
{
	const char *path = t->opts->excl_file;
	int n = 0, lineno = 0, bad = 0, first_bad = 0, over = 0;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	while ((len = getline(&line, &cap, f)) >= 0) {
		char *p = line, *end;
		long v;

		lineno++;
		while (len > 0 && isspace((unsigned char)line[len - 1]))
			line[--len] = 0;
		while (isspace((unsigned char)*p))
			p++;
		if (!*p)
			continue;
		errno = 0;
		v = strtol(p, &end, 10);
		if (errno || end == p || *end || v < 1 || v > 0x3fffffff) {
			if (!bad++)
				first_bad = lineno;
			continue;
		}
		if (has_pid(pids, n, (uint32_t)v))
			continue;
		if (n == KS_MAX_EXCL_FILE) {
			over++;
			continue;
		}
		pids[n++] = (uint32_t)v;
	}
	free(line);
	if (bad)
		ks_warn(t, "%s: skipped %d line%s that %s not a pid (first: line %d)", path, bad, bad == 1 ? "" : "s",
			bad == 1 ? "is" : "are", first_bad);
	if (over)
		ks_warn(t, "%s: lists more than %d pids; %d not excluded", path, KS_MAX_EXCL_FILE, over);
	return n;
}

/* Make ks_excl_pids hold exactly pids[0..n). */
static void excl_apply(struct ks_tracer *t, const uint32_t *pids, int n)
{
	uint32_t stale[KS_MAX_EXCL_FILE], k, prev, *after = NULL, cnt = 0;
	uint64_t bits[KS_EXCL_BITS / 64] = { 0 };
	const uint32_t zero = 0;
	const uint8_t one = 1;
	int nstale = 0;

	/* collect first: deleting while walking the keys would restart the walk */
	while (bpf_map_get_next_key(ks_excl.map_fd, after, &k) == 0) {
		if (!has_pid(pids, n, k) && nstale < KS_MAX_EXCL_FILE)
			stale[nstale++] = k;
		prev = k;
		after = &prev;
	}
	for (int i = 0; i < n; i++) {
		if (bpf_map_update_elem(ks_excl.map_fd, &pids[i], &one, BPF_ANY) != 0) {
			ks_warn(t, "cannot exclude pid %u: %s", pids[i], strerror(errno));
			continue;
		}
		bits[(pids[i] / 64) % (KS_EXCL_BITS / 64)] |= 1ULL << (pids[i] % 64);
		cnt++;
	}
	if (bpf_map_update_elem(ks_excl.bits_fd, &zero, bits, BPF_ANY) != 0)
		ks_warn(t, "cannot update ks_excl_bits: %s", strerror(errno));
	for (int i = 0; i < nstale; i++)
		bpf_map_delete_elem(ks_excl.map_fd, &stale[i]);
	ks_excl.n = cnt;
	if (ks_verbose)
		fprintf(stderr, "%s: excluding %u pid%s listed in %s\n", t->producer, cnt, cnt == 1 ? "" : "s",
			t->opts->excl_file);
}

static void excl_sync(struct ks_tracer *t)
{
	const char *path = t->opts->excl_file;
	uint32_t pids[KS_MAX_EXCL_FILE];
	struct stat st;
	FILE *f;
	int n;

	if (!path || ks_excl.map_fd < 0)
		return;
	if (stat(path, &st) != 0) {
		if (errno == ENOENT) {
			if (ks_excl.state != EXCL_MISSING) {
				ks_excl.state = EXCL_MISSING;
				excl_apply(t, pids, 0);
			}
		} else if (ks_excl.state != EXCL_UNREADABLE) {
			/* keep the current set: better than tracing the pipeline */
			ks_excl.state = EXCL_UNREADABLE;
			ks_warn(t, "cannot read %s: %s", path, strerror(errno));
		}
		return;
	}
	if (ks_excl.state == EXCL_READ && same_version(&st, &ks_excl.st))
		return;
	f = fopen(path, "re");
	if (!f || fstat(fileno(f), &st) != 0) {
		/* ENOENT: replaced between stat and open; the next interval reads it */
		if (errno != ENOENT && ks_excl.state != EXCL_UNREADABLE) {
			ks_excl.state = EXCL_UNREADABLE;
			ks_warn(t, "cannot read %s: %s", path, strerror(errno));
		}
		if (f)
			fclose(f);
		return;
	}
	n = read_pids(t, f, pids);
	fclose(f);
	ks_excl.state = EXCL_READ;
	ks_excl.st = st;
	excl_apply(t, pids, n);
}

/* After load, before attach: the first sync excludes from the first event. */
static int excl_init(struct ks_tracer *t, struct bpf_object *obj)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, ".data.ks_excl");

	if (!t->opts->excl_file)
		return 0;
	ks_excl.map_fd = bpf_object__find_map_fd_by_name(obj, "ks_excl_pids");
	ks_excl.bits_fd = m && bpf_map__value_size(m) == KS_EXCL_BITS / 8 ? bpf_map__fd(m) : -1;
	if (ks_excl.map_fd < 0 || ks_excl.bits_fd < 0) {
		fprintf(stderr, "%s: BPF object has no ks_excl_pids map (from ks_common.bpf.h)\n", t->producer);
		return -1;
	}
	excl_sync(t);
	return 0;
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

/* Per-interval health lines (tracer_stats then producer_stats). */
static void emit_stats(struct ks_tracer *t, double interval_s)
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
	if (t->opts->excl_file) {
		char notes[sizeof(t->notes) + 64];

		snprintf(notes, sizeof(notes), "%s%sexclude_pids_file: %u pids", t->notes, *t->notes ? "; " : "",
			 ks_excl.n);
		ks_json_str(&j, "notes", notes);
	} else {
		ks_json_str(&j, "notes", t->notes);
	}
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
	ks_json_u64(&j, "dropped_tool_lost_total", c->dropped_tool_lost);
	ks_json_u64(&j, "warnings_total", t->warnings);
	ks_emit(t, &j, true);
}

/* Run until --duration or a signal: poll rb (may be NULL) and call tick()
 * every --interval with the interval's length; tick() also runs once at exit. */
static int run(struct ks_tracer *t, struct ring_buffer *rb, void (*tick)(struct ks_tracer *, double))
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
			excl_sync(t);
			tick(t, (now - last) / 1e9);
			emit_stats(t, (now - last) / 1e9);
			last = now;
			while (next <= now)
				next += ival;
			continue;
		}
		/* Sleep until the next tick: a ring-buffer record or a signal (EINTR: epoll_wait and
		 * nanosleep are never restarted after a handler) wakes it sooner.  No shorter cap:
		 * waking five times a second with nothing to do was most of an idle tracer's wake-ups. */
		ms = (int)((wake - now + 999999) / 1000000);
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

		tick(t, (now - last) / 1e9);
		emit_stats(t, (now - last) / 1e9);
	}
	return err;
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

/*
 * Pick the attach mode for tracepoints cat:names[] (NULL-terminated): tp_btf
 * when every one loads+attaches as tp_btf, else the classic tracepoint
 * (fallback_label) when tracefs has them all.  Honours --attach.  Returns
 * 1 = tp_btf, 0 = fallback, -1 = error (one line printed).
 */
static int choose_mode(struct ks_tracer *t, const char *cat, const char *const *names, const char *fallback_label,
		       bool fallback_only)
{
	const char *want = t->opts->attach ? t->opts->attach : "auto";
	bool btf_ok = !fallback_only, tp_ok = tracefs_ok();

	for (int i = 0; names[i]; i++) {
		if (!ks_tp_exists(cat, names[i])) {
			fprintf(stderr, "%s: tracepoint %s:%s is missing on this kernel\n", t->producer, cat, names[i]);
			return -1;
		}
	}
	if (strcmp(want, "tracepoint") != 0 && btf_ok)
		for (int i = 0; names[i] && btf_ok; i++)
			btf_ok = ks_probe_tp_btf(names[i]);
	else
		btf_ok = false;
	if (btf_ok)
		return 1;
	if (strcmp(want, "tp_btf") == 0) {
		fprintf(stderr, "%s: --attach tp_btf requested but %s\n", t->producer,
			fallback_only ? "this tracer has no tp_btf programs" : "tp_btf programs cannot be attached here");
		return -1;
	}
	if (!tp_ok && strcmp(fallback_label, "raw_tp") != 0) {
		fprintf(stderr, "%s: tp_btf unavailable and tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)\n",
			t->producer);
		return -1;
	}
	return 0;
}

void *ks_calloc_percpu(struct ks_tracer *t, size_t value_size)
{
	void *p = calloc(t->ncpu > 0 ? t->ncpu : 1, value_size);

	if (!p)
		fprintf(stderr, "%s: out of memory\n", t->producer);
	return p;
}

void ks_json_pid_filter(struct ks_tracer *t, struct ks_json *j)
{
	if (t->opts->pid)
		ks_json_u64(j, "pid", (uint64_t)t->opts->pid);
	else
		ks_json_null(j, "pid");
}

/* Autoload only the chosen mode's programs: tp_btf ones, or their tracepoint /
 * raw_tp twins.  Other kinds (fentry, kprobe...) keep their own setting. */
static void select_programs(struct bpf_object *obj, bool tp_btf)
{
	struct bpf_program *prog;

	bpf_object__for_each_program(prog, obj) {
		switch (bpf_program__type(prog)) {
		case BPF_PROG_TYPE_TRACING:
			if (bpf_program__expected_attach_type(prog) == BPF_TRACE_RAW_TP)
				bpf_program__set_autoload(prog, tp_btf);
			break;
		case BPF_PROG_TYPE_TRACEPOINT:
		case BPF_PROG_TYPE_RAW_TRACEPOINT:
			bpf_program__set_autoload(prog, !tp_btf);
			break;
		default:
			break;
		}
	}
}

static int load_and_attach(struct ks_tracer *t, struct bpf_object_skeleton *s, const char *cat)
{
	int err;

	probe_btf_release(); /* libbpf parses its own copy for CO-RE and frees it after the load */
	err = bpf_object__load_skeleton(s);
	if (err) {
		fprintf(stderr, "%s: cannot load BPF programs: %s (run with -v for the verifier log)\n", t->producer,
			strerror(-err));
		return -1;
	}
	if (excl_init(t, *s->obj) != 0)
		return -1;
	err = bpf_object__attach_skeleton(s);
	if (err) {
		fprintf(stderr, "%s: cannot attach to %s tracepoints: %s\n", t->producer, cat, strerror(-err));
		return -1;
	}
	return 0;
}

/*
 * Start-up is over: hand the freed heap back to the kernel.  Loading the
 * kernel BTF takes two blocks the size of /sys/kernel/btf/vmlinux (the file's
 * bytes and the parsed copy); the probes' load gets them from mmap and
 * returns them on free, but that free raises glibc's dynamic mmap threshold,
 * so libbpf's load for CO-RE takes them from brk, and what is allocated after
 * it (links, ring buffer, per-CPU buffers) pins the heap top: freed, yet kept
 * (measured: ks-oom-kill 11.4 MiB of heap).  malloc_trim(0) returns every
 * free page, not only the top.
 */
static void release_startup_heap(void)
{
	probe_btf_release();
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

int ks_tracer_main(const struct ks_tracer_desc *d, int argc, char **argv)
{
	struct ks_tracer t;
	struct bpf_object_skeleton *s = NULL;
	struct bpf_object *obj;
	struct ring_buffer *rb = NULL;
	int err = 1, mode;

	set_producer(d->name);
	parse_args(d, argc, argv);
	if (tracer_init(&t, d->name, &ks_opts) != 0)
		return 1;
	mode = choose_mode(&t, d->tp_category, d->tps, d->fallback, d->fallback_only);
	if (mode < 0)
		goto cleanup;
	t.tp_btf = mode == 1;
	snprintf(t.attach_mode, sizeof(t.attach_mode), "%s", t.tp_btf ? "tp_btf" : d->fallback);

	s = d->open();
	if (!s) {
		fprintf(stderr, "%s: cannot open BPF object: %s\n", t.producer, strerror(errno));
		goto cleanup;
	}
	obj = *s->obj;
	select_programs(obj, t.tp_btf);
	if (fill_filter(&t, obj) != 0)
		goto cleanup;
	if (d->configure && d->configure(&t) != 0)
		goto cleanup;
	if (load_and_attach(&t, s, d->tp_category) != 0)
		goto cleanup;
	t.counters_fd = bpf_object__find_map_fd_by_name(obj, "ks_counters");
	if (d->on_event) {
		rb = ring_buffer__new(bpf_object__find_map_fd_by_name(obj, "events"), d->on_event, &t, NULL);
		if (!rb) {
			fprintf(stderr, "%s: cannot set up the ring buffer: %s\n", t.producer, strerror(errno));
			goto cleanup;
		}
	}
	snprintf(t.detail, sizeof(t.detail), "pid=%d", ks_opts.pid);
	if (d->start && d->start(&t) != 0)
		goto cleanup;
	release_startup_heap();
	fprintf(stderr, "%s: attached (attach_mode=%s, %s)\n", t.producer, t.attach_mode, t.detail);
	err = run(&t, rb, d->tick) ? 1 : 0;

cleanup:
	ring_buffer__free(rb);
	if (d->close)
		d->close();
	probe_btf_release();
	ks_out_close(&t.out);
	return err;
}
