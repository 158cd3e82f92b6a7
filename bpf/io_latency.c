// SPDX-License-Identifier: MIT
/*
 * ks-io-latency: block request latency (issue -> complete) per disk and op.
 * Each interval: one io_latency line per (disk, op) that completed requests,
 * with iops, bytes, p50/p95/p99 in ms (linear interpolation inside the log2
 * microsecond bucket that holds the rank) and the queue depth.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "io_latency.h"
#include "io_latency.skel.h"
#include "ks_tracer.h"

static struct io_latency_bpf *skel;
static int stats_fd, depth_fd;
static struct ks_io_stat *percpu;   /* ncpu values */

static const char *op_name[KS_IO_OPS] = { "read", "write", "other" };

static void dev_name(uint32_t dev, char *out, size_t len)
{
	unsigned maj = dev >> 20, min = dev & ((1u << 20) - 1);
	char path[96], line[128];
	FILE *f;

	snprintf(out, len, "%u:%u", maj, min);
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/uevent", maj, min);
	f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "DEVNAME=", 8) == 0) {
			line[strcspn(line, "\n")] = 0;
			snprintf(out, len, "%.60s", line + 8);
			break;
		}
	}
	fclose(f);
}

static void tick(struct ks_tracer *t, double interval_s)
{
	unsigned old = skel->bss->cur_slot & 1;
	struct ks_io_key keys[KS_IO_KEYS], k, nk;
	int nkeys = 0;
	uint64_t now = ks_now_epoch_ns();

	skel->bss->cur_slot = old ^ 1;
	usleep(2000);
	if (bpf_map_get_next_key(stats_fd, NULL, &k) == 0) {
		for (;;) {
			int more = bpf_map_get_next_key(stats_fd, &k, &nk) == 0;

			if (k.slot == old && nkeys < KS_IO_KEYS)
				keys[nkeys++] = k;
			if (!more)
				break;
			k = nk;
		}
	}
	for (int i = 0; i < nkeys; i++) {
		struct ks_io_stat s;
		struct ks_json j;
		char name[64];
		int64_t inflight;
		uint32_t dev = keys[i].dev;

		if (bpf_map_lookup_elem(stats_fd, &keys[i], percpu) != 0)
			continue;
		bpf_map_delete_elem(stats_fd, &keys[i]);
		memset(&s, 0, sizeof(s));
		for (int p = 0; p < t->ncpu; p++) {
			const struct ks_io_stat *q = &percpu[p];

			s.count += q->count;
			s.bytes += q->bytes;
			s.total_us += q->total_us;
			s.depth_sum += q->depth_sum;
			s.depth_samples += q->depth_samples;
			if (q->depth_max > s.depth_max)
				s.depth_max = q->depth_max;
			for (int b = 0; b < KS_HIST_SLOTS; b++)
				s.hist[b] += q->hist[b];
		}
		if (!s.count && !s.depth_samples)
			continue;
		if (bpf_map_lookup_elem(depth_fd, &dev, &inflight) != 0)
			inflight = 0;
		dev_name(dev, name, sizeof(name));
		ks_json_begin(&j, "io_latency", now);
		ks_json_str(&j, "device", name);
		ks_json_u64(&j, "dev_major", dev >> 20);
		ks_json_u64(&j, "dev_minor", dev & ((1u << 20) - 1));
		ks_json_str(&j, "op", op_name[keys[i].op < KS_IO_OPS ? keys[i].op : 2]);
		ks_json_f64(&j, "interval_s", interval_s);
		ks_json_u64(&j, "count", s.count);
		ks_json_u64(&j, "issued", s.depth_samples);
		ks_json_f64(&j, "iops", interval_s > 0 ? s.count / interval_s : NAN);
		ks_json_u64(&j, "bytes", s.bytes);
		ks_json_f64(&j, "bytes_per_sec", interval_s > 0 ? s.bytes / interval_s : NAN);
		ks_json_f64(&j, "avg_ms", s.count ? s.total_us / 1000.0 / s.count : NAN);
		ks_json_f64(&j, "p50_ms", ks_hist_percentile((const uint64_t *)s.hist, KS_HIST_SLOTS, 0.50) / 1000.0);
		ks_json_f64(&j, "p95_ms", ks_hist_percentile((const uint64_t *)s.hist, KS_HIST_SLOTS, 0.95) / 1000.0);
		ks_json_f64(&j, "p99_ms", ks_hist_percentile((const uint64_t *)s.hist, KS_HIST_SLOTS, 0.99) / 1000.0);
		ks_json_f64(&j, "queue_depth_avg", s.depth_samples ? (double)s.depth_sum / s.depth_samples : NAN);
		ks_json_u64(&j, "queue_depth_max", s.depth_max);
		ks_json_i64(&j, "inflight", inflight > 0 ? inflight : 0);
		ks_json_u64_array(&j, "hist_log2_us", (const uint64_t *)s.hist, KS_HIST_SLOTS);
		ks_emit(t, &j, false);
	}
}

static struct bpf_object_skeleton *open_skel(void)
{
	skel = io_latency_bpf__open();
	return skel ? skel->skeleton : NULL;
}

static int start(struct ks_tracer *t)
{
	percpu = ks_calloc_percpu(t, sizeof(*percpu));
	if (!percpu)
		return -1;
	stats_fd = bpf_map__fd(skel->maps.io_stats);
	depth_fd = bpf_map__fd(skel->maps.depth);
	snprintf(t->notes, sizeof(t->notes),
		 "latency = block_rq_issue -> block_rq_complete; hist log2(us); p50/p95/p99 linear within the log2 bucket; "
		 "queue depth = in-flight requests per disk sampled at each issue%s",
		 t->tp_btf ? "" : "; raw_tp fallback (classic block tracepoints lack the request pointer)");
	return 0;
}

static void close_skel(void)
{
	io_latency_bpf__destroy(skel);
	free(percpu);
}

static const struct ks_tracer_desc desc = {
	.name = "io_latency",
	.doc = "ks-io-latency: block I/O latency per disk and op (block_rq_issue/complete), JSON lines.",
	.tp_category = "block",
	.tps = { "block_rq_issue", "block_rq_complete" },
	.fallback = "raw_tp",
	.open = open_skel,
	.start = start,
	.tick = tick,
	.close = close_skel,
};

int main(int argc, char **argv)
{
	return ks_tracer_main(&desc, argc, argv);
}
