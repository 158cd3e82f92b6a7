// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-exec: one record per successful exec, from sched:sched_process_exec.
 *
 * Why not execsnoop's syscalls:sys_enter_execve/sys_exit_execve: any program
 * on a syscalls:* tracepoint turns on the kernel's perf syscall probe, which
 * then runs on every syscall of every task.  sched_process_exec fires once per
 * exec, after the new image is in place (exec_binprm()), in the task itself:
 * current->mm is the new mm, comm is the new one, and the argument strings sit
 * at mm->arg_start..arg_end in the new stack, read with bpf_probe_read_user().
 * Failed exec()s never get here (ks-syscall counts them per errno).
 *
 * tp_btf when the kernel allows it, else the raw_tp twin (same arguments).
 * The record is built in a per-CPU scratch slot and only its used part is
 * copied to the ring buffer (argv is usually far below KS_EXEC_ARGS_MAX).
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"
#include "exec.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ks_exec_event);
} scratch SEC(".maps");

static __always_inline int on_exec(struct task_struct *p)
{
	__u32 zero = 0, tgid = BPF_CORE_READ(p, tgid);
	struct ks_exec_event *e;
	struct mm_struct *mm;
	__u64 start, end, len;
	long err;

	if (ks_filtered(tgid))
		return 0;
	e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	e->ts = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = tgid;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	BPF_CORE_READ_STR_INTO(&e->comm, p, comm);
	mm = BPF_CORE_READ(p, mm);
	start = BPF_CORE_READ(mm, arg_start);
	end = BPF_CORE_READ(mm, arg_end);
	len = end > start ? end - start : 0;
	e->args_total = len;
	if (len > KS_EXEC_ARGS_MAX)
		len = KS_EXEC_ARGS_MAX;
	asm volatile("" : "+r"(len)); /* keep the bound checks below together with the read */
	if (len > KS_EXEC_ARGS_MAX)
		len = KS_EXEC_ARGS_MAX;
	err = 0;
	if (len > 0)
		err = bpf_probe_read_user(e->args, len, (const void *)start);
	e->read_err = (__s32)err;
	e->args_len = err ? 0 : (__u32)len;
	len = e->args_len;
	if (len > KS_EXEC_ARGS_MAX)
		len = KS_EXEC_ARGS_MAX;
	if (bpf_ringbuf_output(&events, e, offsetof(struct ks_exec_event, args) + len, 0)) {
		ks_count(KS_CNT_RB_DROP);
		return 0;
	}
	ks_count(KS_CNT_EVENTS);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(p);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(p);
}
