/* SPDX-License-Identifier: MIT */
/* ks-exec: shared between exec.bpf.c and exec.c */
#ifndef KS_EXEC_H
#define KS_EXEC_H

#include "ks_shared.h"

/* argv bytes copied from the new mm (mm->arg_start..arg_end): the rest is
 * cut and the record says so.  A power of two: the verifier's bound. */
#define KS_EXEC_ARGS_MAX 2048

/* One successful exec; sent with only args_len bytes of args[]. */
struct ks_exec_event {
	__u64 ts;          /* bpf_ktime_get_ns() */
	__u64 cgroup_id;   /* bpf_get_current_cgroup_id(): cgroup v2 id */
	__u32 pid;         /* tgid after exec */
	__u32 ppid;        /* real_parent->tgid */
	__u32 uid;         /* real uid (after exec: a setuid binary keeps the caller's) */
	__u32 args_len;    /* bytes valid in args[] */
	__u64 args_total;  /* arg_end - arg_start: more than args_len when cut */
	__s32 read_err;    /* bpf_probe_read_user() result for argv (0 = ok) */
	char comm[16];     /* after exec */
	char args[KS_EXEC_ARGS_MAX]; /* argv strings, each NUL-terminated */
};

#endif
