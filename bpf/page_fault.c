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

static int top_n = 10;

enum { OPT_TOP = 0x2000 };
static const struct argp_option options[] = {
	{ "top", OPT_TOP, "N", 0, "Top faulting processes per interval (default 10)", 0 },
	{ 0 },
};

static error_t parse(int key, char *arg, struct argp_state *st)
{
	(void)st;
	if (key != OPT_TOP)
		return ARGP_ERR_UNKNOWN;
	top_n = (int)ks_parse_long(program_invocation_short_name, "--top", arg, 0, 100);
	return 0;
}

struct proc { uint32_t tgid; struct ks_pf_proc v; };

static struct page_fault_bpf *skel;
static struct {
	int types_fd, procs_fd;
	uint64_t prev_types[KS_PF_TYPES];
	int64_t prev_min, prev_maj;  /* -1 = unknown */
	struct proc procs[KS_PF_PROCS];
	struct ks_pf_key dels[KS_PF_PROCS];
} pf;

/* minor/major fault counters: vmstat (system) or /proc/PID/stat (--pid) */
static int read_minmaj(int pid, int64_t *min, int64_t *maj)
{
	char buf[4096];
	FILE *f;

	if (pid) {
		char path[64], *p;
		size_t n;
		unsigned long mn = 0, mj = 0;

		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
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

static void tick(struct ks_tracer *t, double iv)
{
	struct ks_pf_key k, nk;
	uint32_t old = skel->bss->cur_slot & 1;
	uint64_t d[KS_PF_TYPES], vals[t->ncpu];
	uint64_t now = ks_now_epoch_ns(), total = 0;
	uint64_t user_tp = 0, kernel_tp = 0, writes = 0, prot = 0, umode = 0;
	int np = 0, nd = 0;
	int64_t mn, mj;
	struct ks_json j;

	skel->bss->cur_slot = old ^ 1;
	usleep(2000);
	for (uint32_t i = 0; i < KS_PF_TYPES; i++) {
		uint64_t s = 0;

		if (bpf_map_lookup_elem(pf.types_fd, &i, vals) == 0)
			for (int p = 0; p < t->ncpu; p++)
				s += vals[p];
		d[i] = s - pf.prev_types[i];
		pf.prev_types[i] = s;
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
	if (bpf_map_get_next_key(pf.procs_fd, NULL, &k) == 0) {
		for (;;) {
			int more = bpf_map_get_next_key(pf.procs_fd, &k, &nk) == 0;

			if (k.slot == old && nd < KS_PF_PROCS) {
				pf.dels[nd++] = k;
				if (bpf_map_lookup_elem(pf.procs_fd, &k, &pf.procs[np].v) == 0)
					pf.procs[np++].tgid = k.tgid;
			}
			if (!more)
				break;
			k = nk;
		}
	}
	for (int i = 0; i < nd; i++)
		bpf_map_delete_elem(pf.procs_fd, &pf.dels[i]);
	qsort(pf.procs, np, sizeof(pf.procs[0]), cmp_proc);

	ks_json_begin(&j, "page_fault_stats", now);
	ks_json_pid_filter(t, &j);
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
	if (read_minmaj(t->opts->pid, &mn, &mj) == 0 && pf.prev_min >= 0 && mn >= pf.prev_min && mj >= pf.prev_maj) {
		ks_json_u64(&j, "minor_faults", (uint64_t)(mn - pf.prev_min));
		ks_json_u64(&j, "major_faults", (uint64_t)(mj - pf.prev_maj));
		pf.prev_min = mn;
		pf.prev_maj = mj;
	} else {
		ks_json_null(&j, "minor_faults");
		ks_json_null(&j, "major_faults");
		if (read_minmaj(t->opts->pid, &mn, &mj) == 0) {
			pf.prev_min = mn;
			pf.prev_maj = mj;
		}
	}
	ks_json_u64(&j, "processes", (uint64_t)np);
	ks_json_null(&j, "latency_avg_ns");
	ks_emit(t, &j, false);

	for (int i = 0; i < np && i < top_n; i++) {
		char comm[17];

		char path[64];
		FILE *f;

		memcpy(comm, pf.procs[i].v.comm, 16);
		comm[16] = 0;
		/* the comm seen at the first fault may predate an exec: prefer the current one */
		snprintf(path, sizeof(path), "/proc/%u/comm", pf.procs[i].tgid);
		f = fopen(path, "r");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = 0;
			fclose(f);
		}
		ks_json_begin(&j, "page_fault", now);
		ks_json_u64(&j, "rank", (uint64_t)i + 1);
		ks_json_u64(&j, "pid", pf.procs[i].tgid);
		ks_json_str(&j, "comm", comm);
		ks_json_f64(&j, "interval_s", iv);
		ks_json_u64(&j, "faults", pf.procs[i].v.faults);
		ks_json_u64(&j, "write_faults", pf.procs[i].v.writes);
		ks_json_u64(&j, "kernel_tp_faults", pf.procs[i].v.kernel);
		ks_json_u64(&j, "cgroup_id", pf.procs[i].v.cgroup_id);
		ks_emit(t, &j, false);
	}
}

static struct bpf_object_skeleton *open_skel(void)
{
	skel = page_fault_bpf__open();
	return skel ? skel->skeleton : NULL;
}

static int configure(struct ks_tracer *t)
{
	int ferr = 0;

	/* A latency needs an exit hook: only fexit on handle_mm_fault would give one. */
	if (ks_probe_fexit("handle_mm_fault", &ferr)) {
		snprintf(t->notes, sizeof(t->notes),
			 "latency_avg_ns null: fexit on handle_mm_fault is permitted but not implemented; ");
	} else {
		snprintf(t->notes, sizeof(t->notes),
			 "latency_avg_ns null: the exceptions tracepoints have no exit event and fexit on handle_mm_fault "
			 "is refused here (%s); ", strerror(-ferr));
	}
	snprintf(t->notes + strlen(t->notes), sizeof(t->notes) - strlen(t->notes),
		 "major/minor from %s deltas; types from the x86 error code (bit0 protection, bit1 write, bit2 user mode)",
		 t->opts->pid ? "/proc/PID/stat majflt/minflt" : "/proc/vmstat pgmajfault/pgfault");
	return 0;
}

static int start(struct ks_tracer *t)
{
	pf.types_fd = bpf_map__fd(skel->maps.pf_types);
	pf.procs_fd = bpf_map__fd(skel->maps.pf_procs);
	if (read_minmaj(t->opts->pid, &pf.prev_min, &pf.prev_maj) != 0)
		pf.prev_min = pf.prev_maj = -1;
	snprintf(t->detail, sizeof(t->detail), "pid=%d; %s", t->opts->pid, t->notes);
	return 0;
}

static void close_skel(void)
{
	page_fault_bpf__destroy(skel);
}

static const struct ks_tracer_desc desc = {
	.name = "page_fault",
	.doc = "ks-page-fault: page faults by type and top faulting processes (exceptions tracepoints), JSON lines.",
	.options = options,
	.parse = parse,
	.tp_category = "exceptions",
	.tps = { "page_fault_user", "page_fault_kernel" },
	.fallback = "tracepoint",
	.open = open_skel,
	.configure = configure,
	.start = start,
	.tick = tick,
	.close = close_skel,
};

int main(int argc, char **argv)
{
	return ks_tracer_main(&desc, argc, argv);
}
