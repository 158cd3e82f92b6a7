// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * ks-io-latency: block_rq_issue -> block_rq_complete latency, keyed by the
 * struct request pointer.  Per (disk, op, interval slot) log2 histogram in
 * microseconds, counts, bytes and the in-flight depth seen at each issue.
 * The classic block tracepoints do not expose the request pointer, so the
 * fallback is raw_tp (BTF-less raw tracepoint), as in libbpf-tools biolatency.
 */
#include "vmlinux.h"
#include "ks_common.bpf.h"
#include "io_latency.h"

char LICENSE[] SEC("license") = "GPL";

#define REQ_OP_MASK_ ((1 << 8) - 1)
#define MINORBITS_ 20

__u32 cur_slot = 0;

struct inflight {
	__u64 ts;
	__u32 dev;
	__u32 op;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KS_IO_INFLIGHT);
	__type(key, __u64);
	__type(value, struct inflight);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KS_IO_DEVS);
	__type(key, __u32);
	__type(value, __s64);
} depth SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, KS_IO_KEYS);
	__type(key, struct ks_io_key);
	__type(value, struct ks_io_stat);
} io_stats SEC(".maps");

static __always_inline struct ks_io_stat *stat_of(__u32 dev, __u32 op)
{
	struct ks_io_key k = { .dev = dev, .op = (__u16)op, .slot = (__u16)(cur_slot & 1) };
	static const struct ks_io_stat zero;
	struct ks_io_stat *s = bpf_map_lookup_elem(&io_stats, &k);

	if (s)
		return s;
	if (bpf_map_update_elem(&io_stats, &k, &zero, BPF_NOEXIST) && !bpf_map_lookup_elem(&io_stats, &k)) {
		ks_count(KS_CNT_MAP_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&io_stats, &k);
}

static __always_inline __u32 rq_dev(struct request *rq)
{
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);

	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << MINORBITS_) | (__u32)BPF_CORE_READ(disk, first_minor);
}

static __always_inline int on_issue(struct request *rq)
{
	struct inflight v = {};
	__u64 key = (__u64)rq;
	__s64 one = 1, *d, cur = 1;
	struct ks_io_stat *s;
	__u32 opf;

	if (ks_filter.targ_tgid || ks_filter.n_excl) {
		/* issue often runs in another task's context: the pid filter applies to the issuing task */
		if (ks_filtered(bpf_get_current_pid_tgid() >> 32))
			return 0;
	}
	opf = BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK_;
	v.op = opf == 0 ? 0 : opf == 1 ? 1 : 2;
	v.dev = rq_dev(rq);
	v.ts = bpf_ktime_get_ns();
	{
		/* a requeued request is issued again: restart its clock, do not count it twice */
		struct inflight *old = bpf_map_lookup_elem(&starts, &key);

		if (old) {
			old->ts = v.ts;
			return 0;
		}
	}
	if (bpf_map_update_elem(&starts, &key, &v, BPF_NOEXIST)) {
		ks_count(KS_CNT_MAP_FULL);
		return 0;
	}
	d = bpf_map_lookup_elem(&depth, &v.dev);
	if (d) {
		cur = __sync_fetch_and_add(d, 1) + 1;
	} else if (bpf_map_update_elem(&depth, &v.dev, &one, BPF_NOEXIST)) {
		d = bpf_map_lookup_elem(&depth, &v.dev);
		if (d)
			cur = __sync_fetch_and_add(d, 1) + 1;
	}
	s = stat_of(v.dev, v.op);
	if (s) {
		s->depth_sum += cur;
		s->depth_samples++;
		if ((__u64)cur > s->depth_max)
			s->depth_max = cur;
	}
	return 0;
}

static __always_inline int on_complete(struct request *rq, unsigned int nr_bytes)
{
	__u64 key = (__u64)rq;
	struct inflight *v = bpf_map_lookup_elem(&starts, &key);
	struct ks_io_stat *s;
	__s64 *d;
	__u64 us;

	if (!v)
		return 0;
	us = (bpf_ktime_get_ns() - v->ts) / 1000;
	d = bpf_map_lookup_elem(&depth, &v->dev);
	if (d)
		__sync_fetch_and_add(d, -1);
	s = stat_of(v->dev, v->op);
	if (s) {
		s->count++;
		s->bytes += nr_bytes;
		s->total_us += us;
		s->hist[ks_slot(us) & (KS_HIST_SLOTS - 1)]++;
	}
	bpf_map_delete_elem(&starts, &key);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(rq_issue_btf, struct request *rq)
{
	return on_issue(rq);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(rq_complete_btf, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	return on_complete(rq, nr_bytes);
}

SEC("raw_tp/block_rq_issue")
int BPF_PROG(rq_issue_raw, struct request *rq)
{
	return on_issue(rq);
}

SEC("raw_tp/block_rq_complete")
int BPF_PROG(rq_complete_raw, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	return on_complete(rq, nr_bytes);
}
