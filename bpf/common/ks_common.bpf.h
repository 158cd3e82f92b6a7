/* SPDX-License-Identifier: MIT */
/* Shared BPF-side pieces of the KernelSight tracers: pid filter settings
 * (const volatile rodata filled by the loader, plus the --exclude-pids-file
 * map it keeps in sync), the per-CPU health counters and log2 helpers.
 * Include once per *.bpf.c after vmlinux.h. */
#ifndef KS_COMMON_BPF_H
#define KS_COMMON_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ks_shared.h"

const volatile struct ks_filter ks_filter SEC(".rodata.ks_filter") = {};

/* --exclude-pids-file: tgids that come and go while we run (the pipeline's
 * own processes across restarts), so a map rather than rodata.  The loader
 * also sets bit tgid % KS_EXCL_BITS of ks_excl_bits for each of them: an
 * event pays one load and a bit test, and the hash lookup only when the bit
 * is set (never while the file is empty, rarely for other processes since
 * pids are dense). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KS_MAX_EXCL_FILE);
	__type(key, __u32);
	__type(value, __u8);
} ks_excl_pids SEC(".maps");

__u64 ks_excl_bits[KS_EXCL_BITS / 64] SEC(".data.ks_excl") = {};

/* Per-CPU health counters, indexed by enum ks_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ks_counters SEC(".maps");

static __always_inline void ks_count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&ks_counters, &which);

	if (v)
		*v += 1;
}

/* true when tgid must not be traced */
static __always_inline bool ks_filtered(__u32 tgid)
{
	if (tgid == ks_filter.self_tgid)
		return true;
	if (ks_filter.targ_tgid && tgid != ks_filter.targ_tgid)
		return true;
#pragma unroll
	for (int i = 0; i < KS_MAX_EXCL; i++) {
		if (i >= ks_filter.n_excl)
			break;
		if (ks_filter.excl_tgid[i] == tgid)
			return true;
	}
	if ((ks_excl_bits[(tgid / 64) % (KS_EXCL_BITS / 64)] & (1ULL << (tgid % 64))) &&
	    bpf_map_lookup_elem(&ks_excl_pids, &tgid))
		return true;
	return false;
}

/* floor(log2(v)) for v > 0; 0 for v == 0 (bucket i holds [2^i, 2^(i+1)), bucket 0 also 0) */
static __always_inline __u32 ks_log2(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 ks_slot(__u64 v)
{
	__u32 s = ks_log2(v);

	if (s >= KS_HIST_SLOTS)
		s = KS_HIST_SLOTS - 1;
	asm volatile("" : "+r"(s)); /* keep the mask below: the verifier needs the bound */
	return s & (KS_HIST_SLOTS - 1);
}

#endif
