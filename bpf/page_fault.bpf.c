// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-page-fault: exceptions:page_fault_user / page_fault_kernel (x86).
 * Counts by type decoded from the x86 error code and per-process counts
 * (top faulters).  No exit hook exists for these tracepoints, so fault
 * latency is not measured here (see the loader's notes).
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"
#include "page_fault.h"

char LICENSE[] SEC("license") = "GPL";

__u32 cur_slot = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KS_PF_TYPES);
	__type(key, __u32);
	__type(value, __u64);
} pf_types SEC(".maps");          /* cumulative; user space takes deltas */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KS_PF_PROCS);
	__type(key, struct ks_pf_key);
	__type(value, struct ks_pf_proc);
} pf_procs SEC(".maps");

static __always_inline int on_fault(unsigned long error_code, int kernel)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 type = (kernel << 3) | (error_code & 7);
	struct ks_pf_key k = { .tgid = tgid, .slot = cur_slot & 1 };
	struct ks_pf_proc *p;
	__u64 *v;

	if (ks_filtered(tgid))
		return 0;
	v = bpf_map_lookup_elem(&pf_types, &type);
	if (v)
		*v += 1;
	p = bpf_map_lookup_elem(&pf_procs, &k);
	if (!p) {
		struct ks_pf_proc z = {};

		bpf_get_current_comm(z.comm, sizeof(z.comm));
		z.cgroup_id = bpf_get_current_cgroup_id();
		if (bpf_map_update_elem(&pf_procs, &k, &z, BPF_NOEXIST) && !bpf_map_lookup_elem(&pf_procs, &k)) {
			ks_count(KS_CNT_MAP_FULL);
			return 0;
		}
		p = bpf_map_lookup_elem(&pf_procs, &k);
		if (!p)
			return 0;
	}
	__sync_fetch_and_add(&p->faults, 1);
	if (error_code & 2)
		__sync_fetch_and_add(&p->writes, 1);
	if (kernel)
		__sync_fetch_and_add(&p->kernel, 1);
	return 0;
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(pf_user_btf, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	return on_fault(error_code, 0);
}

SEC("tp_btf/page_fault_kernel")
int BPF_PROG(pf_kernel_btf, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	return on_fault(error_code, 1);
}

struct ks_raw_pf {
	struct trace_entry ent;
	unsigned long address;
	unsigned long ip;
	unsigned long error_code;
};

SEC("tracepoint/exceptions/page_fault_user")
int pf_user_tp(struct ks_raw_pf *ctx)
{
	return on_fault(ctx->error_code, 0);
}

SEC("tracepoint/exceptions/page_fault_kernel")
int pf_kernel_tp(struct ks_raw_pf *ctx)
{
	return on_fault(ctx->error_code, 1);
}
