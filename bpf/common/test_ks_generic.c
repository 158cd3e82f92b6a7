// SPDX-License-Identifier: MIT
/* Unit test of the generic loader's BTF decoder (ks_gen_plan_btf, ks_gen_format)
 * on BTF built here with libbpf: no kernel, no root. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks_generic.h"

static int failures;

#define CHECK(c)                                                                        \
	do {                                                                            \
		if (!(c)) {                                                             \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); \
			failures++;                                                     \
		}                                                                       \
	} while (0)

struct rec {
	unsigned long long ts;
	int neg;
	unsigned short u16;
	signed char s8;
	_Bool flag;
	char comm[8];
	unsigned int level; /* an enum of 4 bytes */
	unsigned long long big;
	unsigned char big_null;
	unsigned char _pad[3];
};

/* BTF for struct rec; bad = "float", "ptr" or "bitfield" adds a member x of that kind */
static struct btf *rec_btf(int *rec_id, const char *bad)
{
	struct btf *b = btf__new_empty();
	int u64 = btf__add_int(b, "unsigned long long", 8, 0);
	int s32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
	int u16 = btf__add_int(b, "unsigned short", 2, 0);
	int s8 = btf__add_int(b, "signed char", 1, BTF_INT_SIGNED);
	int bl = btf__add_int(b, "_Bool", 1, BTF_INT_BOOL);
	int ch = btf__add_int(b, "char", 1, BTF_INT_CHAR | BTF_INT_SIGNED);
	int u8 = btf__add_int(b, "unsigned char", 1, 0);
	int arr = btf__add_array(b, s32, ch, 8);
	int pad = btf__add_array(b, s32, u8, 3);
	int en = btf__add_enum(b, "level", 4);
	int dbl = btf__add_float(b, "double", 8);
	int ptr = btf__add_ptr(b, u64);
	int id;

	btf__add_enum_value(b, "LOW", 0);
	btf__add_enum_value(b, "HIGH", 7);
	id = btf__add_struct(b, "rec", sizeof(struct rec) + (bad ? 8 : 0));
	btf__add_field(b, "ts", u64, offsetof(struct rec, ts) * 8, 0);
	btf__add_field(b, "neg", s32, offsetof(struct rec, neg) * 8, 0);
	btf__add_field(b, "u16", u16, offsetof(struct rec, u16) * 8, 0);
	btf__add_field(b, "s8", s8, offsetof(struct rec, s8) * 8, 0);
	btf__add_field(b, "flag", bl, offsetof(struct rec, flag) * 8, 0);
	btf__add_field(b, "comm", arr, offsetof(struct rec, comm) * 8, 0);
	btf__add_field(b, "level", en, offsetof(struct rec, level) * 8, 0);
	btf__add_field(b, "big", u64, offsetof(struct rec, big) * 8, 0);
	btf__add_field(b, "big_null", u8, offsetof(struct rec, big_null) * 8, 0);
	btf__add_field(b, "_pad", pad, offsetof(struct rec, _pad) * 8, 0);
	if (bad && strcmp(bad, "float") == 0)
		btf__add_field(b, "x", dbl, sizeof(struct rec) * 8, 0);
	else if (bad && strcmp(bad, "ptr") == 0)
		btf__add_field(b, "x", ptr, sizeof(struct rec) * 8, 0);
	else if (bad && strcmp(bad, "bitfield") == 0)
		btf__add_field(b, "x", s32, sizeof(struct rec) * 8, 3);
	*rec_id = id;
	return b;
}

int main(void)
{
	static struct ks_gen_plan p;
	struct ks_json j;
	char err[256];
	struct rec r;
	struct btf *b;
	int id;

	b = rec_btf(&id, NULL);
	CHECK(ks_gen_plan_btf(b, id, &p, err, sizeof(err)) == 0);
	CHECK(p.ts_off == 0 && p.nfields == 7 && p.nflags == 1);
	snprintf(p.type, sizeof(p.type), "demo");

	memset(&r, 0, sizeof(r));
	r.ts = 5;
	r.neg = -3;
	r.u16 = 65535;
	r.s8 = -128;
	r.flag = 1;
	memcpy(r.comm, "a\"\xff\nbcdefg", 8); /* full array, no NUL: all 8 bytes */
	r.level = 7;
	r.big = 18446744073709551615ULL;
	CHECK(ks_gen_format(&p, &r, sizeof(r), 1000, 42, &j) == 0);
	CHECK(ks_json_end(&j) == 0);
	CHECK(strcmp(j.buf, "{\"type\":\"demo\",\"ts\":1005,\"neg\":-3,\"u16\":65535,\"s8\":-128,\"flag\":1,"
			    "\"comm\":\"a\\\"\\u00ff\\nbcde\",\"level\":7,\"big\":18446744073709551615}\n") == 0);
	if (failures)
		fprintf(stderr, "got %s", j.buf);

	r.big_null = 1;
	r.comm[2] = 0;
	CHECK(ks_gen_format(&p, &r, sizeof(r), 0, 42, &j) == 0 && ks_json_end(&j) == 0);
	CHECK(strstr(j.buf, "\"comm\":\"a\\\"\",") && strstr(j.buf, "\"big\":null}"));
	CHECK(ks_gen_format(&p, &r, sizeof(r) - 1, 0, 42, &j) == -1); /* short record */
	btf__free(b);

	b = rec_btf(&id, "float");
	CHECK(ks_gen_plan_btf(b, id, &p, err, sizeof(err)) == -1);
	CHECK(strcmp(err, "struct rec member 'x' is a floating-point number; the generic loader prints integers, "
			  "bool, enums and char arrays") == 0);
	btf__free(b);
	b = rec_btf(&id, "ptr");
	CHECK(ks_gen_plan_btf(b, id, &p, err, sizeof(err)) == -1 && strstr(err, "'x' is a pointer"));
	btf__free(b);
	b = rec_btf(&id, "bitfield");
	CHECK(ks_gen_plan_btf(b, id, &p, err, sizeof(err)) == -1 && strstr(err, "bitfields"));
	btf__free(b);

	if (failures) {
		fprintf(stderr, "%d failure(s)\n", failures);
		return 1;
	}
	printf("test_ks_generic: ok\n");
	return 0;
}
