// SPDX-License-Identifier: MIT
/*
 * The generic loader: a tracer written as bpf/NAME.bpf.c alone.  See
 * ks_generic.h for the contract and ks_common.bpf.h (KS_EVENT) for the record
 * conventions.  Everything else (options, attach mode, pid filter and
 * exclusion, stats lines, counters files) is ks_tracer_main()'s.
 */
#define _GNU_SOURCE
#include "ks_generic.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks_tracer.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* typedefs and const/volatile/restrict/type tags stripped */
static int skip_mods(const struct btf *btf, int id)
{
	const struct btf_type *t;

	while (id > 0 && (t = btf__type_by_id(btf, id)) && (btf_is_mod(t) || btf_is_typedef(t)))
		id = (int)t->type;
	return id;
}

static const char *kind_words(const struct btf_type *t)
{
	switch (btf_kind(t)) {
	case BTF_KIND_PTR: return "a pointer";
	case BTF_KIND_STRUCT: return "a nested struct";
	case BTF_KIND_UNION: return "a union";
	case BTF_KIND_FLOAT: return "a floating-point number";
	case BTF_KIND_ARRAY: return "an array of other than 1-byte integers";
	case BTF_KIND_INT: return "an integer wider than 8 bytes";
	case BTF_KIND_FWD: return "an incomplete type";
	default: return "an unsupported type";
	}
}

static bool int_size_ok(uint32_t size)
{
	return size == 1 || size == 2 || size == 4 || size == 8;
}

/* Integer-like member type (int, bool, char, enum): its kind and width. */
static bool as_integer(const struct btf_type *t, enum ks_gen_kind *kind, uint32_t *size)
{
	if (btf_is_int(t)) {
		if (btf_int_offset(t) != 0 || !int_size_ok(t->size))
			return false;
		*kind = (btf_int_encoding(t) & BTF_INT_SIGNED) ? KS_GEN_INT : KS_GEN_UINT;
		*size = t->size;
		return true;
	}
	if (btf_is_any_enum(t)) {
		if (!int_size_ok(t->size))
			return false;
		*kind = btf_kflag(t) ? KS_GEN_INT : KS_GEN_UINT; /* kflag: signed enum */
		*size = t->size;
		return true;
	}
	return false;
}

int ks_gen_plan_btf(const struct btf *btf, int rec_id, struct ks_gen_plan *p, char *err, size_t errlen)
{
	const struct btf_type *t = btf__type_by_id(btf, skip_mods(btf, rec_id));
	const struct btf_member *m;
	const char *rname;
	int n;

	memset(p, 0, sizeof(*p));
	p->ts_off = -1;
	if (!t || !btf_is_struct(t)) {
		set_err(err, errlen, "the event record is not a struct");
		return -1;
	}
	rname = btf__name_by_offset(btf, t->name_off);
	snprintf(p->record, sizeof(p->record), "%s", rname && *rname ? rname : "(anonymous)");
	p->size = t->size;
	m = btf_members(t);
	n = btf_vlen(t);
	for (int i = 0; i < n; i++, m++) {
		const char *name = btf__name_by_offset(btf, m->name_off);
		uint32_t bitoff = btf_member_bit_offset(t, i);
		const struct btf_type *mt = btf__type_by_id(btf, skip_mods(btf, (int)m->type));
		struct ks_gen_field f = { .null_flag = -1 };
		size_t len;

		if (!name || !*name) {
			set_err(err, errlen, "struct %s: member %d has no name (anonymous struct or union)", p->record, i);
			return -1;
		}
		if (name[0] == '_')
			continue;
		if (btf_member_bitfield_size(t, i) || bitoff % 8) {
			set_err(err, errlen, "struct %s member '%s': bitfields are not supported", p->record, name);
			return -1;
		}
		if (strlen(name) >= sizeof(f.name)) {
			set_err(err, errlen, "struct %s member '%s': name longer than %d bytes", p->record, name,
				KS_GEN_NAME_MAX - 1);
			return -1;
		}
		snprintf(f.name, sizeof(f.name), "%s", name);
		f.off = bitoff / 8;
		if (mt && as_integer(mt, &f.kind, &f.size)) {
			/* ok */
		} else if (mt && btf_is_array(mt)) {
			const struct btf_array *a = btf_array(mt);
			const struct btf_type *et = btf__type_by_id(btf, skip_mods(btf, (int)a->type));

			if (!et || !(btf_is_int(et) || btf_is_any_enum(et)) || et->size != 1 || a->nelems == 0) {
				set_err(err, errlen,
					"struct %s member '%s' is %s; the generic loader prints integers, bool, enums and "
					"char arrays",
					p->record, name, kind_words(mt));
				return -1;
			}
			f.kind = KS_GEN_STR;
			f.size = a->nelems;
		} else {
			set_err(err, errlen,
				"struct %s member '%s' is %s; the generic loader prints integers, bool, enums and char "
				"arrays",
				p->record, name, mt ? kind_words(mt) : "an unknown type");
			return -1;
		}
		if (f.off + f.size > p->size) {
			set_err(err, errlen, "struct %s member '%s' lies past the struct's end", p->record, name);
			return -1;
		}
		if (strcmp(name, "ts") == 0) {
			if (f.kind == KS_GEN_STR || f.size != 8) {
				set_err(err, errlen, "struct %s member 'ts' must be a 64-bit integer (bpf_ktime_get_ns())",
					p->record);
				return -1;
			}
			p->ts_off = (int)f.off;
			continue;
		}
		len = strlen(name);
		if (len > 5 && strcmp(name + len - 5, "_null") == 0) {
			if (f.kind == KS_GEN_STR) {
				set_err(err, errlen, "struct %s member '%s': a _null flag must be an integer", p->record,
					name);
				return -1;
			}
			f.name[len - 5] = 0; /* the member it flags */
			p->flags[p->nflags++] = f;
			continue;
		}
		if (p->nfields == KS_GEN_MAX_FIELDS) {
			set_err(err, errlen, "struct %s has more than %d printed members", p->record, KS_GEN_MAX_FIELDS);
			return -1;
		}
		p->f[p->nfields++] = f;
	}
	for (int k = 0; k < p->nflags; k++) {
		int i;

		for (i = 0; i < p->nfields && strcmp(p->f[i].name, p->flags[k].name); i++)
			;
		if (i == p->nfields) {
			set_err(err, errlen, "struct %s member '%s_null' flags no member '%s'", p->record,
				p->flags[k].name, p->flags[k].name);
			return -1;
		}
		p->f[i].null_flag = k;
	}
	if (!p->nfields) {
		set_err(err, errlen, "struct %s has no member to print", p->record);
		return -1;
	}
	return 0;
}

int ks_gen_plan_object(struct bpf_object *obj, struct ks_gen_plan *p, char *err, size_t errlen)
{
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_type *t, *sec;
	const struct btf_var_secinfo *vs;
	struct bpf_map *map, *ev;
	const char *data;
	size_t dsize = 0;
	int rid, tid, sid, ptr;

	memset(p, 0, sizeof(*p));
	if (!btf) {
		set_err(err, errlen, "BPF object has no BTF (build it with clang -g)");
		return -1;
	}
	rid = btf__find_by_name_kind(btf, "ks_event_record", BTF_KIND_VAR);
	tid = btf__find_by_name_kind(btf, "ks_event_type", BTF_KIND_VAR);
	map = bpf_object__find_map_by_name(obj, ".rodata.ks_event");
	sid = btf__find_by_name_kind(btf, ".rodata.ks_event", BTF_KIND_DATASEC);
	if (rid <= 0 || tid <= 0 || !map || sid <= 0) {
		set_err(err, errlen,
			"BPF object declares no event record: a tracer without its own NAME.c needs "
			"KS_EVENT(struct NAME_event, \"type\") (ks_common.bpf.h)");
		return -1;
	}
	ev = bpf_object__find_map_by_name(obj, "events");
	if (!ev || bpf_map__type(ev) != BPF_MAP_TYPE_RINGBUF) {
		set_err(err, errlen, "BPF object has no ring buffer map 'events'");
		return -1;
	}
	ptr = skip_mods(btf, (int)btf__type_by_id(btf, rid)->type);
	t = btf__type_by_id(btf, ptr);
	if (!t || !btf_is_ptr(t)) {
		set_err(err, errlen, "ks_event_record must be a pointer to the record struct");
		return -1;
	}
	if (ks_gen_plan_btf(btf, (int)t->type, p, err, errlen) != 0)
		return -1;

	/* the type string: ks_event_type's bytes in .rodata.ks_event's initial value */
	data = bpf_map__initial_value(map, &dsize);
	sec = btf__type_by_id(btf, sid);
	vs = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++, vs++) {
		if ((int)vs->type != tid)
			continue;
		if (!data || vs->offset + vs->size > dsize || !vs->size || vs->size > sizeof(p->type) ||
		    memchr(data + vs->offset, 0, vs->size) == NULL || !data[vs->offset]) {
			set_err(err, errlen, "ks_event_type must be a non-empty string shorter than %zu bytes",
				sizeof(p->type));
			return -1;
		}
		memcpy(p->type, data + vs->offset, vs->size);
		return 0;
	}
	set_err(err, errlen, "ks_event_type is not in section .rodata.ks_event");
	return -1;
}

static uint64_t read_uint(const unsigned char *d, uint32_t size)
{
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;

	switch (size) {
	case 1: memcpy(&u8, d, 1); return u8;
	case 2: memcpy(&u16, d, 2); return u16;
	case 4: memcpy(&u32, d, 4); return u32;
	default: memcpy(&u64, d, 8); return u64;
	}
}

static int64_t read_int(const unsigned char *d, uint32_t size)
{
	int8_t s8;
	int16_t s16;
	int32_t s32;
	int64_t s64;

	switch (size) {
	case 1: memcpy(&s8, d, 1); return s8;
	case 2: memcpy(&s16, d, 2); return s16;
	case 4: memcpy(&s32, d, 4); return s32;
	default: memcpy(&s64, d, 8); return s64;
	}
}

int ks_gen_format(const struct ks_gen_plan *p, const void *data, size_t size, int64_t epoch_off_ns,
		  uint64_t now_epoch_ns, struct ks_json *j)
{
	const unsigned char *d = data;
	uint64_t ts = now_epoch_ns;

	if (size < p->size)
		return -1;
	if (p->ts_off >= 0)
		ts = read_uint(d + p->ts_off, 8) + (uint64_t)epoch_off_ns;
	ks_json_begin(j, p->type, ts);
	for (int i = 0; i < p->nfields; i++) {
		const struct ks_gen_field *f = &p->f[i];

		if (f->null_flag >= 0 && read_uint(d + p->flags[f->null_flag].off, p->flags[f->null_flag].size)) {
			ks_json_null(j, f->name);
			continue;
		}
		switch (f->kind) {
		case KS_GEN_UINT:
			ks_json_u64(j, f->name, read_uint(d + f->off, f->size));
			break;
		case KS_GEN_INT:
			ks_json_i64(j, f->name, read_int(d + f->off, f->size));
			break;
		case KS_GEN_STR: {
			char s[KS_LINE_MAX + 1];
			size_t n = f->size < KS_LINE_MAX ? f->size : KS_LINE_MAX;

			memcpy(s, d + f->off, n);
			s[n] = 0; /* up to the first NUL, or the whole array */
			ks_json_str(j, f->name, s);
			break;
		}
		}
	}
	return 0;
}

/* ------------------------------------------------------------ the loader */

static struct {
	char producer[64];
	char doc[512];
	struct ks_gen_plan plan;
	struct bpf_object_skeleton *skel;
	void (*close)(void);
	bool has_btf, has_fallback;
	uint64_t short_records;
} gen;

static struct bpf_object_skeleton *gen_open(void)
{
	return gen.skel;
}

static void gen_close(void)
{
	if (gen.close)
		gen.close();
	gen.skel = NULL;
}

static int gen_configure(struct ks_tracer *t)
{
	struct bpf_program *prog;
	int n = 0;

	bpf_object__for_each_program(prog, *gen.skel->obj)
		n += bpf_program__autoload(prog);
	if (!n) {
		fprintf(stderr, "%s: no program for attach mode %s: pair every SEC(\"tp_btf/NAME\") with a "
			"SEC(\"tracepoint/CAT/NAME\") or SEC(\"raw_tp/NAME\") twin\n", t->producer, t->attach_mode);
		return -1;
	}
	snprintf(t->notes, sizeof(t->notes),
		 "generic loader: each struct %s record of ring buffer events is one %s line (decoded by BTF)",
		 gen.plan.record, gen.plan.type);
	return 0;
}

static int gen_on_event(void *ctx, void *data, size_t size)
{
	struct ks_tracer *t = ctx;
	struct ks_json j;

	if (ks_gen_format(&gen.plan, data, size, t->epoch_off_ns, ks_now_epoch_ns(), &j) != 0) {
		if (!gen.short_records++)
			ks_warn(t, "ring buffer record of %zu bytes is shorter than struct %s (%u bytes): skipped", size,
				gen.plan.record, gen.plan.size);
		return 0;
	}
	ks_emit(t, &j, false);
	return 0;
}

static void gen_tick(struct ks_tracer *t, double interval_s)
{
	(void)t;
	(void)interval_s;
}

static bool add_name(struct ks_tracer_desc *d, const char *name)
{
	int i;

	for (i = 0; d->tps[i]; i++)
		if (strcmp(d->tps[i], name) == 0)
			return true;
	if (i >= KS_MAX_TPS - 1)
		return false;
	d->tps[i] = name;
	return true;
}

/* Attach points from the program sections.  Returns 0, or -1 after one message. */
static int scan_programs(struct bpf_object *obj, struct ks_tracer_desc *d)
{
	static char category[64];
	struct ks_tracer_desc btf = { 0 }, tp = { 0 };
	struct bpf_program *prog;
	bool raw = false;

	bpf_object__for_each_program(prog, obj) {
		const char *sec = bpf_program__section_name(prog);
		const char *slash;

		if (strncmp(sec, "tp_btf/", 7) == 0) {
			if (!add_name(&btf, sec + 7))
				goto too_many;
		} else if (strncmp(sec, "tracepoint/", 11) == 0 && (slash = strchr(sec + 11, '/'))) {
			size_t n = (size_t)(slash - (sec + 11));

			if (n >= sizeof(category) || (*category && strncmp(category, sec + 11, n)) ||
			    (*category && category[n])) {
				fprintf(stderr, "%s: the generic loader takes tracepoints of one category (%s)\n",
					gen.producer, sec);
				return -1;
			}
			memcpy(category, sec + 11, n);
			category[n] = 0;
			if (!add_name(&tp, slash + 1))
				goto too_many;
		} else if (strncmp(sec, "raw_tp/", 7) == 0 || strncmp(sec, "raw_tracepoint/", 15) == 0) {
			raw = true;
		} else {
			fprintf(stderr, "%s: program %s in section %s: the generic loader attaches tp_btf, tracepoint "
				"and raw_tp programs only\n", gen.producer, bpf_program__name(prog), sec);
			return -1;
		}
	}
	gen.has_btf = btf.tps[0] != NULL;
	gen.has_fallback = tp.tps[0] != NULL || raw;
	if (!gen.has_btf && !gen.has_fallback) {
		fprintf(stderr, "%s: BPF object has no program\n", gen.producer);
		return -1;
	}
	memcpy(d->tps, gen.has_btf ? btf.tps : tp.tps, sizeof(d->tps));
	d->tp_category = category;
	d->fallback = tp.tps[0] || !raw ? "tracepoint" : "raw_tp";
	d->fallback_only = !gen.has_btf;
	return 0;
too_many:
	fprintf(stderr, "%s: the generic loader takes at most %d tracepoints\n", gen.producer, KS_MAX_TPS - 1);
	return -1;
}

int ks_generic_main(const char *name, struct bpf_object_skeleton *(*open)(void), void (*close)(void), int argc,
		    char **argv)
{
	static struct ks_tracer_desc d;
	char err[512];

	snprintf(gen.producer, sizeof(gen.producer), "ks-%s", name);
	for (char *c = gen.producer; *c; c++)
		if (*c == '_')
			*c = '-';
	gen.close = close;
	gen.skel = open();
	if (!gen.skel) {
		fprintf(stderr, "%s: cannot open BPF object: %s\n", gen.producer, strerror(errno));
		return 1;
	}
	if (ks_gen_plan_object(*gen.skel->obj, &gen.plan, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", gen.producer, err);
		gen_close();
		return 1;
	}
	if (scan_programs(*gen.skel->obj, &d) != 0) {
		gen_close();
		return 1;
	}
	snprintf(gen.doc, sizeof(gen.doc),
		 "%s: %s events from bpf/%s.bpf.c (generic loader: each ring buffer record is one JSON line).",
		 gen.producer, gen.plan.type, name);
	d.name = name;
	d.doc = gen.doc;
	d.open = gen_open;
	d.configure = gen_configure;
	d.tick = gen_tick;
	d.on_event = gen_on_event;
	d.close = gen_close;
	return ks_tracer_main(&d, argc, argv);
}
