/* SPDX-License-Identifier: MIT */
/* ks-syscall: shared between syscall.bpf.c and syscall.c */
#ifndef KS_SYSCALL_H
#define KS_SYSCALL_H

#include "ks_shared.h"

#define KS_SC_MAX 512            /* syscall numbers tracked (x86_64 uses < 512) */
#define KS_SC_ERRNO_ENTRIES 16384 /* distinct (slot, syscall, errno, process) per interval pair */

/* per CPU, per syscall, per interval slot; index = slot * KS_SC_MAX + nr */
struct ks_sc_stat {
	__u64 count;
	__u64 errors;
	__u64 total_ns;
	__u64 max_ns;
	__u64 hist[KS_HIST_SLOTS];   /* log2(latency ns) */
};

struct ks_sc_errkey {
	__u32 idx;                   /* slot * KS_SC_MAX + nr */
	__u32 err;                   /* positive errno */
	__u32 tgid;                  /* the failing process: which one probes, which one is broken */
	__u32 pad;
	__u64 cgroup_id;             /* bpf_get_current_cgroup_id(): the task's cgroup v2 id */
};

struct ks_sc_event {
	__u64 ts_ns;                 /* bpf_ktime_get_ns() at exit */
	__u64 latency_ns;
	__s64 ret;
	__s64 arg0;
	__u32 pid;
	__u32 tid;
	__u32 nr;
	char comm[16];
	__u64 cgroup_id;             /* bpf_get_current_cgroup_id(): the task's cgroup v2 id */
	__u32 fd_mode;               /* KS_FD_KNOWN | the S_IFMT bits of arg0's file; 0 = not looked up */
	__u32 pad;
};

/* fd_mode: the file behind arg0 was found (an anonymous inode's type bits are 0) */
#define KS_FD_KNOWN 0x10000u

#endif
