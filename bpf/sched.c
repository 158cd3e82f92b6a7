// SPDX-License-Identifier: MIT
/*
 * ks-sched: scheduler activity.  Each interval: one `sched` line per CPU
 * (switches, voluntary/involuntary, wakeups, run-queue depth) and one
 * `sched_stats` summary line with the run-queue latency and timeslice log2
 * histograms (us) and their p50/p95/p99 (linear within the log2 bucket).
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
#include "sched.h"
#include "sched.skel.h"

static struct ks_tracer_opts opts;

static error_t parse(int key, char *arg, struct argp_state *st)
{
	switch (key) {
	case ARGP_KEY_INIT:
		st->child_inputs[0] = &opts;
		break;
	case ARGP_KEY_ARG:
		fprintf(stderr, "ks-sched: unexpected argument '%s'\n", arg);
		exit(2);
	default:
		return ARGP_ERR_UNKNOWN;
	}
	return 0;
}

static const struct argp_child children[] = { { &ks_common_argp, 0, NULL, 0 }, { 0 } };
static const struct argp argp = {
	NULL, parse, NULL,
	"ks-sched: context switches, run-queue latency, timeslices and run-queue depth, JSON lines.",
	children, NULL, NULL,
};

struct ctx {
	struct sched_bpf *skel;
	int fd, ncpu;
	struct ks_sched_stat *percpu;
};

#define U64P(x) ((const uint64_t *)(x))

static void pid_field(struct ks_json *j)
{
	if (opts.pid)
		ks_json_u64(j, "pid", (uint64_t)opts.pid);
	else
		ks_json_null(j, "pid");
}

static void tick(struct ks_tracer *t, void *vctx, double iv)
{
	struct ctx *c = vctx;
	uint32_t old = c->skel->bss->cur_slot & 1;
	struct ks_sched_stat s;
	uint64_t now = ks_now_epoch_ns();
	struct ks_json j;

	c->skel->bss->cur_slot = old ^ 1;
	usleep(2000);
	if (bpf_map_lookup_elem(c->fd, &old, c->percpu) != 0)
		return;
	memset(&s, 0, sizeof(s));
	for (int cpu = 0; cpu < c->ncpu; cpu++) {
		const struct ks_sched_stat *p = &c->percpu[cpu];

		s.switches += p->switches;
		s.voluntary += p->voluntary;
		s.involuntary += p->involuntary;
		s.wakeups += p->wakeups;
		s.wakeups_new += p->wakeups_new;
		s.nr_running_sum += p->nr_running_sum;
		s.nr_running_samples += p->nr_running_samples;
		if (p->nr_running_max > s.nr_running_max)
			s.nr_running_max = p->nr_running_max;
		s.runq_total_us += p->runq_total_us;
		s.runq_count += p->runq_count;
		s.slice_total_us += p->slice_total_us;
		s.slice_count += p->slice_count;
		for (int b = 0; b < KS_HIST_SLOTS; b++) {
			s.runq_hist[b] += p->runq_hist[b];
			s.slice_hist[b] += p->slice_hist[b];
		}
		if (!p->switches && !p->wakeups && !p->nr_running_samples)
			continue;
		ks_json_begin(&j, "sched", now);
		pid_field(&j);
		ks_json_u64(&j, "cpu", (uint64_t)cpu);
		ks_json_f64(&j, "interval_s", iv);
		ks_json_u64(&j, "switches", p->switches);
		ks_json_f64(&j, "switches_per_sec", iv > 0 ? p->switches / iv : NAN);
		ks_json_u64(&j, "voluntary", p->voluntary);
		ks_json_u64(&j, "involuntary", p->involuntary);
		ks_json_u64(&j, "wakeups", p->wakeups + p->wakeups_new);
		if (p->nr_running_samples) {
			ks_json_f64(&j, "nr_running_avg", (double)p->nr_running_sum / p->nr_running_samples);
			ks_json_u64(&j, "nr_running_max", p->nr_running_max);
		} else {
			ks_json_null(&j, "nr_running_avg");
			ks_json_null(&j, "nr_running_max");
		}
		ks_json_f64(&j, "runq_avg_us", p->runq_count ? (double)p->runq_total_us / p->runq_count : NAN);
		ks_emit(t, &j, false);
	}
	memset(c->percpu, 0, sizeof(*c->percpu) * c->ncpu);
	bpf_map_update_elem(c->fd, &old, c->percpu, BPF_ANY);

	ks_json_begin(&j, "sched_stats", now);
	pid_field(&j);
	ks_json_f64(&j, "interval_s", iv);
	ks_json_u64(&j, "cpus", (uint64_t)c->ncpu);
	ks_json_u64(&j, "switches", s.switches);
	ks_json_f64(&j, "switches_per_sec", iv > 0 ? s.switches / iv : NAN);
	ks_json_u64(&j, "voluntary", s.voluntary);
	ks_json_u64(&j, "involuntary", s.involuntary);
	ks_json_u64(&j, "wakeups", s.wakeups);
	ks_json_u64(&j, "wakeups_new", s.wakeups_new);
	if (s.nr_running_samples) {
		ks_json_f64(&j, "nr_running_avg", (double)s.nr_running_sum / s.nr_running_samples);
		ks_json_u64(&j, "nr_running_max", s.nr_running_max);
	} else {
		ks_json_null(&j, "nr_running_avg");
		ks_json_null(&j, "nr_running_max");
	}
	ks_json_u64(&j, "runq_count", s.runq_count);
	ks_json_f64(&j, "runq_avg_us", s.runq_count ? (double)s.runq_total_us / s.runq_count : NAN);
	ks_json_f64(&j, "runq_p50_us", ks_hist_percentile(U64P(s.runq_hist), KS_HIST_SLOTS, 0.50));
	ks_json_f64(&j, "runq_p95_us", ks_hist_percentile(U64P(s.runq_hist), KS_HIST_SLOTS, 0.95));
	ks_json_f64(&j, "runq_p99_us", ks_hist_percentile(U64P(s.runq_hist), KS_HIST_SLOTS, 0.99));
	ks_json_u64_array(&j, "runq_hist_log2_us", U64P(s.runq_hist), KS_HIST_SLOTS);
	ks_json_u64(&j, "slice_count", s.slice_count);
	ks_json_f64(&j, "slice_avg_us", s.slice_count ? (double)s.slice_total_us / s.slice_count : NAN);
	ks_json_f64(&j, "slice_p50_us", ks_hist_percentile(U64P(s.slice_hist), KS_HIST_SLOTS, 0.50));
	ks_json_u64_array(&j, "slice_hist_log2_us", U64P(s.slice_hist), KS_HIST_SLOTS);
	ks_emit(t, &j, false);
}

int main(int argc, char **argv)
{
	static const char *const tps[] = { "sched_switch", "sched_wakeup", "sched_wakeup_new" };
	struct ks_tracer t;
	struct ctx c = { 0 };
	struct sched_bpf *skel = NULL;
	int err = 1, mode;

	ks_argp_parse(&argp, argc, argv, NULL);
	if (ks_tracer_init(&t, "sched", &opts) != 0)
		return 1;
	mode = ks_choose_mode(&t, "sched", tps, 3, "raw_tp");
	if (mode < 0)
		goto cleanup;
	snprintf(t.attach_mode, sizeof(t.attach_mode), "%s", mode ? "tp_btf" : "raw_tp");
	skel = sched_bpf__open();
	if (!skel) {
		fprintf(stderr, "ks-sched: cannot open BPF object: %s\n", strerror(errno));
		goto cleanup;
	}
	ks_fill_filter(&opts, &skel->rodata->self_tgid, &skel->rodata->targ_tgid, &skel->rodata->n_excl,
		       skel->rodata->excl_tgid);
	bpf_program__set_autoload(skel->progs.switch_btf, mode == 1);
	bpf_program__set_autoload(skel->progs.wakeup_btf, mode == 1);
	bpf_program__set_autoload(skel->progs.wakeup_new_btf, mode == 1);
	bpf_program__set_autoload(skel->progs.switch_raw, mode == 0);
	bpf_program__set_autoload(skel->progs.wakeup_raw, mode == 0);
	bpf_program__set_autoload(skel->progs.wakeup_new_raw, mode == 0);
	if ((err = sched_bpf__load(skel)) != 0) {
		fprintf(stderr, "ks-sched: cannot load BPF programs: %s (run with -v for the verifier log)\n", strerror(-err));
		err = 1;
		goto cleanup;
	}
	if ((err = sched_bpf__attach(skel)) != 0) {
		fprintf(stderr, "ks-sched: cannot attach to sched tracepoints: %s\n", strerror(-err));
		err = 1;
		goto cleanup;
	}
	err = 1;
	c.skel = skel;
	c.ncpu = libbpf_num_possible_cpus();
	c.percpu = calloc(c.ncpu, sizeof(*c.percpu));
	c.fd = bpf_map__fd(skel->maps.sched_stats);
	t.counters_fd = bpf_map__fd(skel->maps.ks_counters);
	if (!c.percpu)
		goto cleanup;
	snprintf(t.notes, sizeof(t.notes),
		 "runq latency = wakeup or preemption -> switch-in (as runqlat); voluntary = prev_state != TASK_RUNNING; "
		 "nr_running = rq->nr_running of the CPU sampled at each switch (null with --pid); hist log2(us)");
	fprintf(stderr, "ks-sched: attached (attach_mode=%s, pid=%d)\n", t.attach_mode, opts.pid);
	err = ks_run(&t, NULL, tick, &c) ? 1 : 0;

cleanup:
	sched_bpf__destroy(skel);
	free(c.percpu);
	ks_tracer_close(&t);
	return err;
}
