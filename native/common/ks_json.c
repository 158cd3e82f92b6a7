// SPDX-License-Identifier: MIT
#include "ks_json.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Room kept back for the closing "}\n". */
#define TAIL 2

static void put(struct ks_json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct ks_json *j, const char *fmt, ...)
{
	size_t room;
	va_list ap;
	int n;

	if (j->overflow)
		return;
	room = KS_LINE_MAX - TAIL - j->len;
	va_start(ap, fmt);
	n = vsnprintf(j->buf + j->len, room + 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n > room) {
		j->overflow = 1;
		return;
	}
	j->len += (size_t)n;
}

static void put_escaped(struct ks_json *j, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	put(j, "\"");
	for (const unsigned char *p = (const unsigned char *)s; *p && !j->overflow; p++) {
		unsigned char c = *p;

		if (c == '"' || c == '\\')
			put(j, "\\%c", c);
		else if (c == '\n')
			put(j, "\\n");
		else if (c == '\t')
			put(j, "\\t");
		else if (c < 0x20 || c >= 0x7f)
			/* Kernel strings (comm, device names) are bytes, not UTF-8: escape
			 * anything outside printable ASCII so the line is always valid JSON. */
			put(j, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
		else
			put(j, "%c", c);
	}
	put(j, "\"");
}

static void key(struct ks_json *j, const char *k)
{
	put(j, ",\"%s\":", k);
	j->nfields++;
}

void ks_json_begin(struct ks_json *j, const char *type, uint64_t ts_ns)
{
	j->len = 0;
	j->overflow = 0;
	j->nfields = 0;
	put(j, "{\"type\":");
	put_escaped(j, type);
	put(j, ",\"ts\":%" PRIu64, ts_ns);
}

void ks_json_u64(struct ks_json *j, const char *k, uint64_t v)
{
	key(j, k);
	put(j, "%" PRIu64, v);
}

void ks_json_i64(struct ks_json *j, const char *k, int64_t v)
{
	key(j, k);
	put(j, "%" PRId64, v);
}

void ks_json_f64(struct ks_json *j, const char *k, double v)
{
	key(j, k);
	if (!isfinite(v))
		put(j, "null");
	else
		put(j, "%.10g", v);
}

void ks_json_str(struct ks_json *j, const char *k, const char *s)
{
	key(j, k);
	put_escaped(j, s ? s : "");
}

void ks_json_null(struct ks_json *j, const char *k)
{
	key(j, k);
	put(j, "null");
}

void ks_json_u64_array(struct ks_json *j, const char *k, const uint64_t *v, size_t n)
{
	key(j, k);
	put(j, "[");
	for (size_t i = 0; i < n; i++)
		put(j, i ? ",%" PRIu64 : "%" PRIu64, v[i]);
	put(j, "]");
}

int ks_json_end(struct ks_json *j)
{
	if (j->overflow)
		return -1;
	memcpy(j->buf + j->len, "}\n", 3);
	j->len += 2;
	return 0;
}
