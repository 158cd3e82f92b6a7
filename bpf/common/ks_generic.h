/* SPDX-License-Identifier: MIT */
/*
 * ks_generic: the loader of a tracer that is only bpf/NAME.bpf.c +
 * schema/events/NAME.json.  The build (bpf/CMakeLists.txt) links
 * ks_generic_main.c.in, configured per tracer, when bpf/NAME.c does not exist.
 *
 * The BPF object declares KS_EVENT(struct rec, "type") (ks_common.bpf.h): a
 * ring buffer `events` and, in section .rodata.ks_event, the line's "type"
 * (ks_event_type) and a pointer whose BTF names the record (ks_event_record).
 * At start-up the record's BTF becomes a plan (one entry per printed member;
 * an unsupported member is refused with one message); each record is then
 * printed as one JSON line through ks_json/ks_emit like every other tracer.
 * The attach points come from the program sections: each SEC("tp_btf/NAME")
 * paired with a SEC("tracepoint/CAT/NAME") or SEC("raw_tp/NAME") twin, as in
 * the hand-written tracers.
 */
#ifndef KS_GENERIC_H
#define KS_GENERIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "ks_json.h"
#include "ks_shared.h" /* struct ks_filter, which every skeleton names */

#define KS_GEN_MAX_FIELDS 64
#define KS_GEN_NAME_MAX 64

enum ks_gen_kind { KS_GEN_UINT, KS_GEN_INT, KS_GEN_STR };

struct ks_gen_field {
	char name[KS_GEN_NAME_MAX];
	enum ks_gen_kind kind;
	uint32_t off;   /* bytes into the record */
	uint32_t size;  /* integer width 1..8, or char array length */
	int null_flag;  /* index into flags[] of its X_null member, -1 = never null */
};

struct ks_gen_plan {
	char type[KS_GEN_NAME_MAX];   /* the line's "type" */
	char record[KS_GEN_NAME_MAX]; /* the record struct's name */
	uint32_t size;                /* sizeof the record */
	int ts_off;                   /* offset of __u64 ts, -1 = none (read time) */
	int nfields;
	struct ks_gen_field f[KS_GEN_MAX_FIELDS];
	int nflags;
	struct ks_gen_field flags[KS_GEN_MAX_FIELDS]; /* X_null members */
};

/* Plan for struct type rec_id of btf; 0, or -1 with the reason in err. */
int ks_gen_plan_btf(const struct btf *btf, int rec_id, struct ks_gen_plan *p, char *err, size_t errlen);
/* Plan for an opened (not necessarily loaded) object declaring KS_EVENT(). */
int ks_gen_plan_object(struct bpf_object *obj, struct ks_gen_plan *p, char *err, size_t errlen);
/* Build record data (size bytes) as a line; ts for a record without ts is now_epoch_ns.
 * Returns 0, or -1 when the record is shorter than the plan's struct. */
int ks_gen_format(const struct ks_gen_plan *p, const void *data, size_t size, int64_t epoch_off_ns,
		  uint64_t now_epoch_ns, struct ks_json *j);

/* The whole loader: name = "oom_kill"; open() returns NAME_bpf__open()'s skeleton. */
int ks_generic_main(const char *name, struct bpf_object_skeleton *(*open)(void), void (*close)(void), int argc,
		    char **argv);

#endif
