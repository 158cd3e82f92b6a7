/* SPDX-License-Identifier: MIT */
/* ks-io-latency: shared between io_latency.bpf.c and io_latency.c */
#ifndef KS_IO_LATENCY_H
#define KS_IO_LATENCY_H

#include "ks_shared.h"

#define KS_IO_OPS 3          /* 0 read, 1 write, 2 other (flush, discard, ...) */
#define KS_IO_INFLIGHT 16384 /* requests in flight tracked at once */
#define KS_IO_KEYS 1024      /* (slot, dev, op) entries */
#define KS_IO_DEVS 256

struct ks_io_key {
	__u32 dev;               /* kernel dev_t of the whole disk: major << 20 | minor */
	__u16 op;
	__u16 slot;              /* interval slot 0/1 */
};

struct ks_io_stat {
	__u64 count;
	__u64 bytes;
	__u64 total_us;
	__u64 depth_sum;         /* in-flight depth sampled at each issue (incl. this one) */
	__u64 depth_samples;
	__u64 depth_max;
	__u64 hist[KS_HIST_SLOTS]; /* log2(latency us), issue -> complete */
};

#endif
