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

static struct sched_bpf *skel;
static int stats_fd;
static struct ks_sched_stat *percpu;   /* ncpu values */

#define U64P(x) ((const uint64_t *)(x))

static void tick(struct ks_tracer *t, double iv)
{
	uint32_t old = skel->bss->cur_slot & 1;
	struct ks_sched_stat s;
	uint64_t now = ks_now_epoch_ns();
	struct ks_json j;

	skel->bss->cur_slot = old ^ 1;
	usleep(2000);
	if (bpf_map_lookup_elem(stats_fd, &old, percpu) != 0)
		return;
	memset(&s, 0, sizeof(s));
	for (int cpu = 0; cpu < t->ncpu; cpu++) {
		const struct ks_sched_stat *p = &percpu[cpu];

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
		ks_json_pid_filter(t, &j);
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
	memset(percpu, 0, sizeof(*percpu) * t->ncpu);
	bpf_map_update_elem(stats_fd, &old, percpu, BPF_ANY);

	ks_json_begin(&j, "sched_stats", now);
	ks_json_pid_filter(t, &j);
	ks_json_f64(&j, "interval_s", iv);
	ks_json_u64(&j, "cpus", (uint64_t)t->ncpu);
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

static struct bpf_object_skeleton *open_skel(void)
{
	skel = sched_bpf__open();
	return skel ? skel->skeleton : NULL;
}

static int start(struct ks_tracer *t)
{
	percpu = ks_calloc_percpu(t, sizeof(*percpu));
	if (!percpu)
		return -1;
	stats_fd = bpf_map__fd(skel->maps.sched_stats);
	snprintf(t->notes, sizeof(t->notes),
		 "runq latency = wakeup or preemption -> switch-in (as runqlat); voluntary = prev_state != TASK_RUNNING; "
		 "nr_running = rq->nr_running of the CPU sampled at each switch (null with --pid); hist log2(us)");
	return 0;
}

static void close_skel(void)
{
	sched_bpf__destroy(skel);
	free(percpu);
}

static const struct ks_tracer_desc desc = {
	.name = "sched",
	.doc = "ks-sched: context switches, run-queue latency, timeslices and run-queue depth, JSON lines.",
	.tp_category = "sched",
	.tps = { "sched_switch", "sched_wakeup", "sched_wakeup_new" },
	.fallback = "raw_tp",
	.open = open_skel,
	.start = start,
	.tick = tick,
	.close = close_skel,
};

int main(int argc, char **argv)
{
	return ks_tracer_main(&desc, argc, argv);
}
