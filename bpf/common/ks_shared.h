/* SPDX-License-Identifier: MIT */
/* Constants shared by the BPF programs and their loaders. */
#ifndef KS_SHARED_H
#define KS_SHARED_H

#define KS_MAX_EXCL 8
#define KS_MAX_EXCL_FILE 256  /* pids taken from --exclude-pids-file */
#define KS_EXCL_BITS 4096     /* their prefilter: bit tgid % KS_EXCL_BITS */
#define KS_HIST_SLOTS 32      /* log2 buckets; the last one also holds everything above */

/* pid filter, set by the loader before load (in its own rodata section,
 * .rodata.ks_filter, so the shared loader code finds it in every object) */
struct ks_filter {
	__u32 self_tgid;                  /* the loader itself: never traced */
	__u32 targ_tgid;                  /* --pid: 0 = all */
	__u32 n_excl;                     /* --exclude-pid count */
	__u32 excl_tgid[KS_MAX_EXCL];
};

enum ks_counter {
	KS_CNT_RB_DROP = 0,     /* bpf_ringbuf_reserve() failed */
	KS_CNT_MAP_FULL = 1,    /* bpf_map_update_elem() failed */
	KS_CNT_EVENTS = 2,      /* events submitted to the ring buffer */
	KS_CNT_MAX = 4,
};

#endif
