// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-sched: sched_switch, sched_wakeup, sched_wakeup_new.
 * Run-queue latency as runqlat measures it: from wakeup (or from being
 * preempted while runnable) to the next switch-in; timeslice from switch-in to
 * switch-out; per-CPU switch counts split voluntary/involuntary from
 * prev_state; run-queue depth = rq->nr_running of this CPU, reached through
 * task->se.cfs_rq->rq (the typed ksym `runqueues` has no address under this
 * kernel's lockdown), sampled at every switch.
 * Per-task timestamps live in LRU hashes keyed by pid so the same code runs
 * as tp_btf or, as fallback, raw_tp (which cannot use task storage).
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"
#include "sched.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING_ 0

__u32 cur_slot = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KS_SCHED_TASKS);
	__type(key, __u32);
	__type(value, __u64);
} enq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KS_SCHED_TASKS);
	__type(key, __u32);
	__type(value, __u64);
} oncpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ks_sched_stat);
} sched_stats SEC(".maps");

static __always_inline struct ks_sched_stat *cpu_stat(void)
{
	__u32 k = cur_slot & 1;

	return bpf_map_lookup_elem(&sched_stats, &k);
}

static __always_inline bool task_filtered(struct task_struct *p)
{
	return ks_filtered(BPF_CORE_READ(p, tgid));
}

static __always_inline void mark_enqueued(struct task_struct *p, __u64 now)
{
	__u32 pid = BPF_CORE_READ(p, pid);

	if (!pid || task_filtered(p))
		return;
	if (bpf_map_update_elem(&enq, &pid, &now, BPF_ANY))
		ks_count(KS_CNT_MAP_FULL);
}

static __always_inline int on_wakeup(struct task_struct *p, bool is_new)
{
	struct ks_sched_stat *s = cpu_stat();

	if (s && !task_filtered(p)) {
		if (is_new)
			s->wakeups_new++;
		else
			s->wakeups++;
	}
	mark_enqueued(p, bpf_ktime_get_ns());
	return 0;
}

static __always_inline int on_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
				     unsigned int prev_state)
{
	struct ks_sched_stat *s = cpu_stat();
	__u64 now = bpf_ktime_get_ns(), *tsp;
	__u32 prev_pid = BPF_CORE_READ(prev, pid), next_pid = BPF_CORE_READ(next, pid);
	bool prev_counted = !task_filtered(prev);
	bool involuntary = preempt || (prev_state & 0xff) == TASK_RUNNING_;
	struct rq *rq;

	if (!s)
		return 0;
	if (prev_counted) {
		s->switches++;
		if (prev_pid) {
			if (involuntary)
				s->involuntary++;
			else
				s->voluntary++;
			tsp = bpf_map_lookup_elem(&oncpu, &prev_pid);
			if (tsp && *tsp && now > *tsp) {
				__u64 us = (now - *tsp) / 1000;

				s->slice_total_us += us;
				s->slice_count++;
				s->slice_hist[ks_slot(us) & (KS_HIST_SLOTS - 1)]++;
				*tsp = 0;
			}
			if (involuntary)  /* still runnable: it waits on the run queue from now */
				mark_enqueued(prev, now);
		}
	}
	if (!ks_filter.targ_tgid) {
		struct task_struct *t = prev_pid ? prev : next;

		rq = BPF_CORE_READ(t, se.cfs_rq, rq);
		if (rq) {
			__u64 n = BPF_CORE_READ(rq, nr_running);

			s->nr_running_sum += n;
			s->nr_running_samples++;
			if (n > s->nr_running_max)
				s->nr_running_max = n;
		}
	}
	if (!next_pid || task_filtered(next))
		return 0;
	tsp = bpf_map_lookup_elem(&enq, &next_pid);
	if (tsp) {
		if (now > *tsp) {
			__u64 us = (now - *tsp) / 1000;

			s->runq_total_us += us;
			s->runq_count++;
			s->runq_hist[ks_slot(us) & (KS_HIST_SLOTS - 1)]++;
		}
		bpf_map_delete_elem(&enq, &next_pid);
	}
	if (bpf_map_update_elem(&oncpu, &next_pid, &now, BPF_ANY))
		ks_count(KS_CNT_MAP_FULL);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(switch_btf, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	return on_switch(preempt, prev, next, prev_state);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(wakeup_btf, struct task_struct *p)
{
	return on_wakeup(p, false);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(wakeup_new_btf, struct task_struct *p)
{
	return on_wakeup(p, true);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	return on_switch(preempt, prev, next, prev_state);
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(wakeup_raw, struct task_struct *p)
{
	return on_wakeup(p, false);
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(wakeup_new_raw, struct task_struct *p)
{
	return on_wakeup(p, true);
}
