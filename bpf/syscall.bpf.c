// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-syscall: raw_syscalls sys_enter/sys_exit.
 * Hot path: one task-local-storage slot per task (start ts, nr, arg0) and a
 * per-CPU array indexed by [interval slot][syscall nr]; the ring buffer is
 * touched only for calls slower than min_lat_ns; errors go to a per-CPU hash
 * only on the (rarer) error path.
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"
#include "syscall.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u64 min_lat_ns = 10000000ULL;
__u32 cur_slot = 0;   /* flipped by user space each interval (0/1) */

struct start {
	__u64 ts;
	__s64 arg0;
	__u32 nr;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct start);
} starts SEC(".maps");

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

static __always_inline int on_enter(__u64 nr, __s64 arg0)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct start *s;

	if (ks_filtered(tgid))
		return 0;
	s = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s) {
		ks_count(KS_CNT_MAP_FULL);
		return 0;
	}
	s->nr = (__u32)nr;
	s->arg0 = arg0;
	s->ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline void count_errno(__u32 idx, long ret)
{
	struct ks_sc_errkey k = { .idx = idx, .err = (__u32)(-ret) };
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

static __always_inline int on_exit(long ret)
{
	struct start *s;
	struct ks_sc_stat *st;
	__u64 now, lat;
	__u32 nr, idx;

	s = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, 0);
	if (!s || !s->ts)
		return 0;
	now = bpf_ktime_get_ns();
	lat = now - s->ts;
	s->ts = 0;
	nr = s->nr;
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
	st->hist[ks_slot(lat) & (KS_HIST_SLOTS - 1)]++;
	if (ret < 0 && ret >= -4095) {
		st->errors++;
		count_errno(idx, ret);
	}
	if (lat >= min_lat_ns) {
		struct ks_sc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		__u64 id;

		if (!e) {
			ks_count(KS_CNT_RB_DROP);
			return 0;
		}
		id = bpf_get_current_pid_tgid();
		e->ts_ns = now;
		e->latency_ns = lat;
		e->ret = ret;
		e->arg0 = s->arg0;
		e->pid = id >> 32;
		e->tid = (__u32)id;
		e->nr = nr;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		bpf_ringbuf_submit(e, 0);
		ks_count(KS_CNT_EVENTS);
	}
	return 0;
}

/* Preferred: BTF-typed raw tracepoints (args read directly, no perf buffer copy). */
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
