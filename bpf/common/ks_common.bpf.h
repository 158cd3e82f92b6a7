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

/*
 * Generic tracers: a bpf/NAME.bpf.c with no bpf/NAME.c is loaded by the
 * generic loader (common/ks_generic.c), which prints each record of the ring
 * buffer `events` as one JSON line, decoded with the object's BTF.  Declare
 * the record struct and the line's "type" (the event key in
 * schema/events/NAME.json) once, at file scope:
 *
 *   struct oom_kill_event { __u64 ts; __u32 pid; char comm[16]; ... };
 *   KS_EVENT(struct oom_kill_event, "oom_victim");
 *
 * It defines the ring buffer `events` (KS_EVENT_RB_BYTES, 256 KiB unless
 * defined before this header) and two read-only globals the loader reads
 * through BTF: ks_event_type (the type string) and ks_event_record (a pointer
 * whose BTF type names the record struct; never used by the programs).
 *
 * Record members, in the line in struct order under their own names:
 *   __u64 ts                  bpf_ktime_get_ns(); becomes the line's "ts"
 *                             (Unix epoch ns).  Without it: read time.
 *   integers (1-8 bytes), bool, enums   JSON integers (bool as 0/1)
 *   char[N] (any 1-byte element)        JSON string up to the first NUL
 *   X_null (integer)          not printed; non-zero writes member X as null
 *   _anything                 not printed (padding, internal)
 * Anything else (pointers, nested structs, floats, bitfields, other arrays)
 * is refused at start-up with one message.
 */
#ifndef KS_EVENT_RB_BYTES
#define KS_EVENT_RB_BYTES (256 * 1024)
#endif
#define KS_EVENT_TYPE_MAX 64
#define KS_EVENT(record, type_name)                                               \
	struct {                                                                  \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                               \
		__uint(max_entries, KS_EVENT_RB_BYTES);                           \
	} events SEC(".maps");                                                    \
	_Static_assert(sizeof(type_name) <= KS_EVENT_TYPE_MAX, "event type too long"); \
	const volatile char ks_event_type[] SEC(".rodata.ks_event") = type_name;  \
	record *const volatile ks_event_record SEC(".rodata.ks_event") = 0

/* Reserve a record in `events`, counting a drop when the ring buffer is full. */
#define KS_EVENT_RESERVE(record)                                                  \
	({                                                                        \
		record *__e = bpf_ringbuf_reserve(&events, sizeof(record), 0);   \
		if (!__e)                                                         \
			ks_count(KS_CNT_RB_DROP);                                 \
		__e;                                                              \
	})

/* Submit a reserved record and count it. */
static __always_inline void ks_event_submit(void *e)
{
	bpf_ringbuf_submit(e, 0);
	ks_count(KS_CNT_EVENTS);
}

#endif
