/* SPDX-License-Identifier: MIT */
/* ks-page-fault: shared between page_fault.bpf.c and page_fault.c */
#ifndef KS_PAGE_FAULT_H
#define KS_PAGE_FAULT_H

#include "ks_shared.h"

#define KS_PF_PROCS 8192
/* type index = kernel_tp << 3 | (error_code & 7): bit0 protection (else
 * not-present), bit1 write (else read), bit2 user-mode access */
#define KS_PF_TYPES 16

struct ks_pf_key {
	__u32 tgid;
	__u32 slot;
};

struct ks_pf_proc {
	__u64 faults;
	__u64 writes;
	__u64 kernel;            /* from page_fault_kernel */
	char comm[16];
	__u64 cgroup_id;         /* bpf_get_current_cgroup_id() at its first fault in the interval */
};

#endif
