/* SPDX-License-Identifier: MIT */
/* ks-sched: shared between sched.bpf.c and sched.c */
#ifndef KS_SCHED_H
#define KS_SCHED_H

#include "ks_shared.h"

#define KS_SCHED_TASKS 16384

/* per CPU, per interval slot (PERCPU_ARRAY index 0/1) */
struct ks_sched_stat {
	__u64 switches;          /* context switches away from any task (incl. idle) */
	__u64 voluntary;         /* prev blocked (prev_state != TASK_RUNNING) */
	__u64 involuntary;       /* prev preempted while TASK_RUNNING */
	__u64 wakeups;           /* sched_wakeup */
	__u64 wakeups_new;       /* sched_wakeup_new */
	__u64 nr_running_sum;    /* rq->nr_running sampled at each switch on this CPU */
	__u64 nr_running_samples;
	__u64 nr_running_max;
	__u64 runq_total_us;
	__u64 runq_count;
	__u64 slice_total_us;
	__u64 slice_count;
	__u64 runq_hist[KS_HIST_SLOTS];  /* log2(us) wakeup/preempt -> switch-in */
	__u64 slice_hist[KS_HIST_SLOTS]; /* log2(us) switch-in -> switch-out */
};

#endif
