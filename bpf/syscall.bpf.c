// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-syscall: raw_syscalls sys_enter/sys_exit (+ sched_switch, see below).
 *
 * Hot path (a syscall that does not leave the CPU), per call:
 *   sys_enter: pid_tgid + filter compare, ktime, one inlined per-CPU array
 *              store into the CPU's "current syscall" slot;
 *   sys_exit:  one inlined per-CPU slot read + tid compare, ktime, one inlined
 *              per-CPU array update of the [interval slot][nr] stats.
 * No task-local-storage, hash map, ring buffer or comm helper on that path.
 *
 * Why a per-CPU slot is correct.  Between sys_enter and sys_exit a task can
 * only leave its CPU through the scheduler (there is no migration without a
 * context switch), and every context switch runs the sched_switch program
 * below *as the outgoing task*.  Invariant: a valid slot (ts != 0) always
 * belongs to the task currently running on that CPU.  sched_switch keeps it
 * by moving ("parking") a valid slot owned by the outgoing task into that
 * task's task-local storage and emptying the slot.  sys_exit therefore finds
 * its start either in the CPU slot (the common case: tid matches) or, for a
 * call that blocked or was preempted, in the task's storage (the slow path
 * pays the task-storage lookup only for those calls; they are slow anyway).
 * The tid stored in the slot makes this robust when the invariant is broken
 * (programs attached while tasks were mid-syscall, a tid change by execve of
 * a non-leader thread, exit_group which has no sys_exit): a mismatch never
 * attributes another task's start; it falls back to the parked copy or drops
 * the one sample.  Programs on the syscall tracepoints run with preemption
 * disabled (bpf_probe.h guards syscall probes with preempt_notrace), so a
 * slot update cannot be interleaved with a sched_switch on the same CPU.
 *
 * The ring buffer is touched only for calls slower than min_lat_ns whose
 * number is not in slow_skip (blocking waits, see --slow-exclude); errno
 * counts go to a per-CPU hash only on the (rarer) error path.
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"
#include "syscall.h"

char LICENSE[] SEC("license") = "GPL";

#define KS_PF_EXITING 0x00000004 /* include/linux/sched.h */

const volatile __u64 min_lat_ns = 10000000ULL;
/* --slow-exclude bitmap by syscall nr: read only past min_lat_ns, so the
 * per-call cost stays the same; the stats still count these calls. */
const volatile __u64 slow_skip[KS_SC_MAX / 64] = {};
/* Syscalls whose first argument is a file descriptor: a slow one says what it
 * waited on (a read on a pipe or socket is a wait, on a regular file or block
 * device it is storage). */
const volatile __u64 fd_arg0[KS_SC_MAX / 64] = {};
__u32 cur_slot = 0;   /* flipped by user space each interval (0/1) */

struct start {
	__u64 ts;             /* bpf_ktime_get_ns() at sys_enter; 0 = empty */
	__s64 arg0;
	__u32 tid;            /* owner of the slot */
	__u32 nr;
};

/* The CPU's in-flight syscall (one entry per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct start);
} cur_sc SEC(".maps");

/* Starts of syscalls whose task was switched out before sys_exit. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct start);
} parked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * KS_SC_MAX);
	__type(key, __u32);
	__type(value, struct ks_sc_stat);
} sc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, KS_SC_ERRNO_ENTRIES);
	__type(key, struct ks_sc_errkey);
	__type(value, __u64);
} sc_errnos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static const __u32 zero = 0;

static __always_inline int on_enter(__u64 nr, __s64 arg0)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct start *c;

	if (ks_filtered(id >> 32))
		return 0;
	c = bpf_map_lookup_elem(&cur_sc, &zero);
	if (!c)
		return 0;
	c->tid = (__u32)id;
	c->nr = (__u32)nr;
	c->arg0 = arg0;
	c->ts = bpf_ktime_get_ns();
	return 0;
}

static __noinline void count_errno(__u32 idx, __u32 err)
{
	struct ks_sc_errkey k = { .idx = idx, .err = err, .tgid = bpf_get_current_pid_tgid() >> 32,
				  .cgroup_id = bpf_get_current_cgroup_id() };
	__u64 one = 1, *v;

	v = bpf_map_lookup_elem(&sc_errnos, &k);
	if (v) {
		*v += 1;
		return;
	}
	if (bpf_map_update_elem(&sc_errnos, &k, &one, BPF_NOEXIST) != 0) {
		v = bpf_map_lookup_elem(&sc_errnos, &k); /* lost a race with ourselves? */
		if (v)
			*v += 1;
		else
			ks_count(KS_CNT_MAP_FULL);
	}
}

/* The type bits of the current task's file descriptor fd, with KS_FD_KNOWN;
 * 0 when there is none (closed during the call, or out of the table).  Read
 * at sys_exit, so a descriptor closed and reused meanwhile by another thread
 * is the new file's type: rare, and the call's latency is still right. */
static __always_inline __u32 fd_mode_of(__s64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;
	umode_t mode;

	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) != 0 || !f)
		return 0;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	return KS_FD_KNOWN | (mode & 0170000);
}

/* Out of line: only for calls slower than min_lat_ns. */
static __noinline void emit_slow(__u64 now, __u64 lat, __s64 ret, __s64 arg0, __u32 nr)
{
	struct ks_sc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	__u64 id;

	if (!e) {
		ks_count(KS_CNT_RB_DROP);
		return;
	}
	id = bpf_get_current_pid_tgid();
	e->ts_ns = now;
	e->latency_ns = lat;
	e->ret = ret;
	e->arg0 = arg0;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->nr = nr;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->fd_mode = (nr < KS_SC_MAX && fd_arg0[nr / 64] & (1ULL << (nr % 64))) ? fd_mode_of(arg0) : 0;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	ks_count(KS_CNT_EVENTS);
}

static __always_inline int on_exit(long ret)
{
	struct start *c, *s;
	struct ks_sc_stat *st;
	__u64 id, now, ts, lat;
	__s64 arg0;
	__u32 nr, idx;

	c = bpf_map_lookup_elem(&cur_sc, &zero);
	if (!c)
		return 0;
	id = bpf_get_current_pid_tgid();
	ts = c->ts;
	if (ts && c->tid == (__u32)id) {
		c->ts = 0;
		s = c;
	} else {
		/* slow path: the call blocked or was preempted (or we started mid-call) */
		if (ks_filtered(id >> 32))
			return 0;
		s = bpf_task_storage_get(&parked, bpf_get_current_task_btf(), 0, 0);
		if (!s)
			return 0;
		ts = s->ts;
		if (!ts || s->tid != (__u32)id)
			return 0;
		s->ts = 0;
	}
	nr = s->nr;
	arg0 = s->arg0;
	now = bpf_ktime_get_ns();
	lat = now - ts;
	if (nr >= KS_SC_MAX)
		return 0;
	idx = nr + (cur_slot & 1) * KS_SC_MAX;
	st = bpf_map_lookup_elem(&sc_stats, &idx);
	if (!st)
		return 0;
	st->count++;
	st->total_ns += lat;
	if (lat > st->max_ns)
		st->max_ns = lat;
	st->hist[ks_slot(lat)]++;
	if ((unsigned long)ret >= (unsigned long)-4095L) {
		st->errors++;
		count_errno(idx, (__u32)-ret);
	}
	if (lat >= min_lat_ns && !(slow_skip[nr / 64] & (1ULL << (nr % 64))))
		emit_slow(now, lat, ret, arg0, nr);
	return 0;
}

/* Runs as the outgoing task (prev == current): park its in-flight syscall. */
static __always_inline int on_switch(void)
{
	struct start *c = bpf_map_lookup_elem(&cur_sc, &zero);
	struct task_struct *task;
	struct start *s;

	if (!c || !c->ts)
		return 0;
	task = bpf_get_current_task_btf();
	if (c->tid == (__u32)task->pid && !(task->flags & KS_PF_EXITING)) {
		s = bpf_task_storage_get(&parked, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (s)
			*s = *c;
		else
			ks_count(KS_CNT_MAP_FULL);
	}
	c->ts = 0;
	return 0;
}

/* Preferred: BTF-typed raw tracepoints (args read directly, no perf buffer copy).
 * sched_switch first: the skeleton attaches in this order. */
SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_btf)
{
	return on_switch();
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter_btf, struct pt_regs *regs, long id)
{
	return on_enter(id, (__s64)regs->di);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_btf, struct pt_regs *regs, long ret)
{
	return on_exit(ret);
}

/* Fallback: classic tracepoints. */
struct ks_raw_sys_exit {
	struct trace_entry ent;
	long id;
	long ret;
};

SEC("tracepoint/sched/sched_switch")
int sched_switch_tp(void *ctx)
{
	return on_switch();
}

SEC("tracepoint/raw_syscalls/sys_enter")
int sys_enter_tp(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx->id, (__s64)ctx->args[0]);
}

SEC("tracepoint/raw_syscalls/sys_exit")
int sys_exit_tp(struct ks_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}
