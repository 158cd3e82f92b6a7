// SPDX-License-Identifier: MIT
/*
 * ks-page-fault: page faults by type (x86 error code) and top faulting
 * processes per interval.  Major vs minor come from the kernel's own
 * counters: /proc/vmstat pgfault/pgmajfault deltas system-wide, or
 * /proc/PID/stat minflt/majflt deltas with --pid.  Fault latency needs an exit
 * hook (fexit on handle_mm_fault); where that is refused it is null and the
 * tracer_stats notes say why.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "ks_tracer.h"
#include "page_fault.h"
#include "page_fault.skel.h"

static struct ks_tracer_opts opts;
static int top_n = 10;

enum { OPT_TOP = 0x2000 };
static const struct argp_option options[] = {
	{ "top", OPT_TOP, "N", 0, "Top faulting processes per interval (default 10)", 0 },
	{ 0 },
};

static error_t parse(int key, char *arg, struct argp_state *st)
{
	switch (key) {
	case ARGP_KEY_INIT:
		st->child_inputs[0] = &opts;
		break;
	case OPT_TOP:
		top_n = (int)ks_parse_long("ks-page-fault", "--top", arg, 0, 100);
		break;
	case ARGP_KEY_ARG:
		fprintf(stderr, "ks-page-fault: unexpected argument '%s'\n", arg);
		exit(2);
	default:
		return ARGP_ERR_UNKNOWN;
	}
	return 0;
}

static const struct argp_child children[] = { { &ks_common_argp, 0, NULL, 0 }, { 0 } };
static const struct argp argp = {
	options, parse, NULL,
	"ks-page-fault: page faults by type and top faulting processes (exceptions tracepoints), JSON lines.",
	children, NULL, NULL,
};

struct proc { uint32_t tgid; struct ks_pf_proc v; };

struct ctx {
	struct page_fault_bpf *skel;
	int types_fd, procs_fd, ncpu;
	uint64_t prev_types[KS_PF_TYPES];
	int64_t prev_min, prev_maj;  /* -1 = unknown */
	struct proc procs[KS_PF_PROCS];
	struct ks_pf_key dels[KS_PF_PROCS];
};

/* minor/major fault counters: vmstat (system) or /proc/PID/stat (--pid) */
static int read_minmaj(int64_t *min, int64_t *maj)
{
	char buf[4096];
	FILE *f;

	if (opts.pid) {
		char path[64], *p;
		size_t n;
		unsigned long mn = 0, mj = 0;

		snprintf(path, sizeof(path), "/proc/%d/stat", opts.pid);
		f = fopen(path, "r");
		if (!f)
			return -1;
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = 0;
		p = strrchr(buf, ')');
		/* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt */
		if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %lu %*u %lu", &mn, &mj) != 2)
			return -1;
		*min = (int64_t)mn;
		*maj = (int64_t)mj;
		return 0;
	}
	f = fopen("/proc/vmstat", "r");
	if (!f)
		return -1;
	int64_t all = -1, mj = -1;
	while (fgets(buf, sizeof(buf), f)) {
		long long v;

		if (sscanf(buf, "pgfault %lld", &v) == 1)
			all = v;
		else if (sscanf(buf, "pgmajfault %lld", &v) == 1)
			mj = v;
	}
	fclose(f);
	if (all < 0 || mj < 0)
		return -1;
	*min = all - mj;
	*maj = mj;
	return 0;
}

static int cmp_proc(const void *a, const void *b)
{
	const struct proc *x = a, *y = b;

	return x->v.faults < y->v.faults ? 1 : x->v.faults > y->v.faults ? -1 : 0;
}

static void tick(struct ks_tracer *t, void *vctx, double iv)
{
	struct ctx *c = vctx;
	uint32_t old = c->skel->bss->cur_slot & 1;
	uint64_t d[KS_PF_TYPES], vals[c->ncpu];
	uint64_t now = ks_now_epoch_ns(), total = 0;
	uint64_t user_tp = 0, kernel_tp = 0, writes = 0, prot = 0, umode = 0;
	struct ks_pf_key k, nk;
	int np = 0, nd = 0;
	int64_t mn, mj;
	struct ks_json j;

	c->skel->bss->cur_slot = old ^ 1;
	usleep(2000);
	for (uint32_t i = 0; i < KS_PF_TYPES; i++) {
		uint64_t s = 0;

		if (bpf_map_lookup_elem(c->types_fd, &i, vals) == 0)
			for (int p = 0; p < c->ncpu; p++)
				s += vals[p];
		d[i] = s - c->prev_types[i];
		c->prev_types[i] = s;
		total += d[i];
		if (i & 8)
			kernel_tp += d[i];
		else
			user_tp += d[i];
		if (i & 1)
			prot += d[i];
		if (i & 2)
			writes += d[i];
		if (i & 4)
			umode += d[i];
	}
	if (bpf_map_get_next_key(c->procs_fd, NULL, &k) == 0) {
		for (;;) {
			int more = bpf_map_get_next_key(c->procs_fd, &k, &nk) == 0;

			if (k.slot == old && nd < KS_PF_PROCS) {
				c->dels[nd++] = k;
				if (bpf_map_lookup_elem(c->procs_fd, &k, &c->procs[np].v) == 0)
					c->procs[np++].tgid = k.tgid;
			}
			if (!more)
				break;
			k = nk;
		}
	}
	for (int i = 0; i < nd; i++)
		bpf_map_delete_elem(c->procs_fd, &c->dels[i]);
	qsort(c->procs, np, sizeof(c->procs[0]), cmp_proc);

	ks_json_begin(&j, "page_fault_stats", now);
	if (opts.pid)
		ks_json_u64(&j, "pid", (uint64_t)opts.pid);
	else
		ks_json_null(&j, "pid");
	ks_json_f64(&j, "interval_s", iv);
	ks_json_u64(&j, "faults", total);
	ks_json_f64(&j, "faults_per_sec", iv > 0 ? total / iv : NAN);
	ks_json_u64(&j, "user_tp_faults", user_tp);
	ks_json_u64(&j, "kernel_tp_faults", kernel_tp);
	ks_json_u64(&j, "read_faults", total - writes);
	ks_json_u64(&j, "write_faults", writes);
	ks_json_u64(&j, "not_present_faults", total - prot);
	ks_json_u64(&j, "protection_faults", prot);
	ks_json_u64(&j, "user_mode_faults", umode);
	ks_json_u64(&j, "kernel_mode_faults", total - umode);
	if (read_minmaj(&mn, &mj) == 0 && c->prev_min >= 0 && mn >= c->prev_min && mj >= c->prev_maj) {
		ks_json_u64(&j, "minor_faults", (uint64_t)(mn - c->prev_min));
		ks_json_u64(&j, "major_faults", (uint64_t)(mj - c->prev_maj));
		c->prev_min = mn;
		c->prev_maj = mj;
	} else {
		ks_json_null(&j, "minor_faults");
		ks_json_null(&j, "major_faults");
		if (read_minmaj(&mn, &mj) == 0) {
			c->prev_min = mn;
			c->prev_maj = mj;
		}
	}
	ks_json_u64(&j, "processes", (uint64_t)np);
	ks_json_null(&j, "latency_avg_ns");
	ks_emit(t, &j, false);

	for (int i = 0; i < np && i < top_n; i++) {
		char comm[17];

		char path[64];
		FILE *f;

		memcpy(comm, c->procs[i].v.comm, 16);
		comm[16] = 0;
		/* the comm seen at the first fault may predate an exec: prefer the current one */
		snprintf(path, sizeof(path), "/proc/%u/comm", c->procs[i].tgid);
		f = fopen(path, "r");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = 0;
			fclose(f);
		}
		ks_json_begin(&j, "page_fault", now);
		ks_json_u64(&j, "rank", (uint64_t)i + 1);
		ks_json_u64(&j, "pid", c->procs[i].tgid);
		ks_json_str(&j, "comm", comm);
		ks_json_f64(&j, "interval_s", iv);
		ks_json_u64(&j, "faults", c->procs[i].v.faults);
		ks_json_u64(&j, "write_faults", c->procs[i].v.writes);
		ks_json_u64(&j, "kernel_tp_faults", c->procs[i].v.kernel);
		ks_emit(t, &j, false);
	}
}

int main(int argc, char **argv)
{
	static const char *const tps[] = { "page_fault_user", "page_fault_kernel" };
	static struct ctx c;
	struct ks_tracer t;
	struct page_fault_bpf *skel = NULL;
	int err = 1, mode, ferr = 0;
	int64_t mn, mj;

	ks_argp_parse(&argp, argc, argv, NULL);
	if (ks_tracer_init(&t, "page_fault", &opts) != 0)
		return 1;
	mode = ks_choose_mode(&t, "exceptions", tps, 2, "tracepoint");
	if (mode < 0)
		goto cleanup;
	snprintf(t.attach_mode, sizeof(t.attach_mode), "%s", mode ? "tp_btf" : "tracepoint");
	/* A latency needs an exit hook: only fexit on handle_mm_fault would give one. */
	if (ks_probe_fexit("handle_mm_fault", &ferr)) {
		snprintf(t.notes, sizeof(t.notes),
			 "latency_avg_ns null: fexit on handle_mm_fault is permitted but not implemented; ");
	} else {
		snprintf(t.notes, sizeof(t.notes),
			 "latency_avg_ns null: the exceptions tracepoints have no exit event and fexit on handle_mm_fault "
			 "is refused here (%s); ", strerror(-ferr));
	}
	snprintf(t.notes + strlen(t.notes), sizeof(t.notes) - strlen(t.notes),
		 "major/minor from %s deltas; types from the x86 error code (bit0 protection, bit1 write, bit2 user mode)",
		 opts.pid ? "/proc/PID/stat majflt/minflt" : "/proc/vmstat pgmajfault/pgfault");
	skel = page_fault_bpf__open();
	if (!skel) {
		fprintf(stderr, "ks-page-fault: cannot open BPF object: %s\n", strerror(errno));
		goto cleanup;
	}
	ks_fill_filter(&opts, &skel->rodata->self_tgid, &skel->rodata->targ_tgid, &skel->rodata->n_excl,
		       skel->rodata->excl_tgid);
	bpf_program__set_autoload(skel->progs.pf_user_btf, mode == 1);
	bpf_program__set_autoload(skel->progs.pf_kernel_btf, mode == 1);
	bpf_program__set_autoload(skel->progs.pf_user_tp, mode == 0);
	bpf_program__set_autoload(skel->progs.pf_kernel_tp, mode == 0);
	if ((err = page_fault_bpf__load(skel)) != 0) {
		fprintf(stderr, "ks-page-fault: cannot load BPF programs: %s (run with -v for the verifier log)\n", strerror(-err));
		err = 1;
		goto cleanup;
	}
	if ((err = page_fault_bpf__attach(skel)) != 0) {
		fprintf(stderr, "ks-page-fault: cannot attach to exceptions tracepoints: %s\n", strerror(-err));
		err = 1;
		goto cleanup;
	}
	err = 1;
	c.skel = skel;
	c.ncpu = libbpf_num_possible_cpus();
	c.types_fd = bpf_map__fd(skel->maps.pf_types);
	c.procs_fd = bpf_map__fd(skel->maps.pf_procs);
	c.prev_min = c.prev_maj = -1;
	if (read_minmaj(&mn, &mj) == 0) {
		c.prev_min = mn;
		c.prev_maj = mj;
	}
	t.counters_fd = bpf_map__fd(skel->maps.ks_counters);
	fprintf(stderr, "ks-page-fault: attached (attach_mode=%s, pid=%d; %s)\n", t.attach_mode, opts.pid, t.notes);
	err = ks_run(&t, NULL, tick, &c) ? 1 : 0;

cleanup:
	page_fault_bpf__destroy(skel);
	ks_tracer_close(&t);
	return err;
}
