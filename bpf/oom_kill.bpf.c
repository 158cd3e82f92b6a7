// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-oom-kill: one line per OOM victim, from oom:mark_victim (the kernel has
 * chosen the victim and sent it SIGKILL; the tracepoint runs in the task that
 * ran the OOM killer).  A generic tracer: no bpf/oom_kill.c, the generic
 * loader (common/ks_generic.c) prints struct oom_kill_event as the
 * "oom_victim" line of schema/events/oom_kill.json.
 *
 * tp_btf gets the victim's task_struct: process id, memory as the kernel's
 * own tracepoint computes it (mm counters, kB), its memory cgroup (id and
 * name of the memory controller's cgroup: cgroup v1 or v2).  The classic
 * tracepoint fallback reads the kernel's record instead (the same figures,
 * but its pid is the victim thread's and it has no task pointer, so the
 * memory cgroup is null).
 *
 * The --pid filter applies to the victim; the exclusion lists do not: an OOM
 * kill of a pipeline process is exactly what must be reported, and a kill
 * cannot feed back into more kills the way tracing our own syscalls would.
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define PAGE_KB 4 /* x86: 4 KiB pages */

struct oom_kill_event {
	__u64 ts;
	__u32 pid;
	char comm[16];
	__u32 uid;
	__s32 oom_score_adj;
	__u64 total_vm_kb;
	__u64 anon_rss_kb;
	__u64 file_rss_kb;
	__u64 shmem_rss_kb;
	__u64 pgtables_kb;
	__u64 memcg_id;
	__u8 memcg_id_null;
	char memcg[64];
	__u8 memcg_null;
	__u32 killer_pid;
	char killer_comm[16];
};

KS_EVENT(struct oom_kill_event, "oom_victim");

static __always_inline bool skip(__u32 victim_tgid)
{
	return ks_filter.targ_tgid && victim_tgid != ks_filter.targ_tgid;
}

static __always_inline void set_killer(struct oom_kill_event *e)
{
	e->ts = bpf_ktime_get_ns();
	e->killer_pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->killer_comm, sizeof(e->killer_comm));
}

/* get_mm_counter(): percpu_counter_read_positive(&mm->rss_stat[i]) */
static __always_inline __u64 mm_kb(struct mm_struct *mm, int i)
{
	s64 v = BPF_CORE_READ(mm, rss_stat[i].count);

	return v > 0 ? (__u64)v * PAGE_KB : 0;
}

/* The memory controller's cgroup of task: kernfs id (= inode number of its
 * directory under the cgroup mount) and its directory name. */
static __always_inline void set_memcg(struct oom_kill_event *e, struct task_struct *task)
{
	struct kernfs_node *kn;
	const char *name;
	int id;

	e->memcg_id_null = e->memcg_null = 1;
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= CGROUP_SUBSYS_COUNT)
		return;
	kn = BPF_CORE_READ(task, cgroups, subsys[id], cgroup, kn);
	if (!kn)
		return;
	e->memcg_id = BPF_CORE_READ(kn, id);
	e->memcg_id_null = 0;
	name = (const char *)BPF_CORE_READ(kn, name);
	if (name && bpf_probe_read_kernel_str(e->memcg, sizeof(e->memcg), name) > 0) {
		if (!e->memcg[0]) { /* the root cgroup's directory has no name */
			e->memcg[0] = '/';
			e->memcg[1] = 0;
		}
		e->memcg_null = 0;
	}
}

SEC("tp_btf/mark_victim")
int BPF_PROG(mark_victim_btf, struct task_struct *task)
{
	struct oom_kill_event *e;
	struct mm_struct *mm;
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (skip(tgid))
		return 0;
	e = KS_EVENT_RESERVE(struct oom_kill_event);
	if (!e)
		return 0;
	set_killer(e);
	e->pid = tgid;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	/* mark_oom_victim(): uid of __task_cred(tsk) */
	e->uid = BPF_CORE_READ(task, real_cred, uid.val);
	e->oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);
	mm = BPF_CORE_READ(task, mm);
	e->total_vm_kb = BPF_CORE_READ(mm, total_vm) * PAGE_KB;
	e->anon_rss_kb = mm_kb(mm, MM_ANONPAGES);
	e->file_rss_kb = mm_kb(mm, MM_FILEPAGES);
	e->shmem_rss_kb = mm_kb(mm, MM_SHMEMPAGES);
	e->pgtables_kb = (__u64)BPF_CORE_READ(mm, pgtables_bytes.counter) >> 10;
	set_memcg(e, task);
	ks_event_submit(e);
	return 0;
}

SEC("tracepoint/oom/mark_victim")
int mark_victim_tp(struct trace_event_raw_mark_victim *ctx)
{
	struct oom_kill_event *e;
	__u32 off;

	if (skip(ctx->pid))
		return 0;
	e = KS_EVENT_RESERVE(struct oom_kill_event);
	if (!e)
		return 0;
	set_killer(e);
	e->pid = ctx->pid;
	off = ctx->__data_loc_comm & 0xffff;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), (void *)ctx + off);
	e->uid = ctx->uid;
	e->oom_score_adj = ctx->oom_score_adj;
	e->total_vm_kb = ctx->total_vm;
	e->anon_rss_kb = ctx->anon_rss;
	e->file_rss_kb = ctx->file_rss;
	e->shmem_rss_kb = ctx->shmem_rss;
	e->pgtables_kb = ctx->pgtables;
	e->memcg_id = 0;
	e->memcg_id_null = e->memcg_null = 1;
	e->memcg[0] = 0;
	ks_event_submit(e);
	return 0;
}
