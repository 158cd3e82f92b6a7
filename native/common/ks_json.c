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

int ks_utf8_next(const unsigned char *s, size_t n, int32_t *cp)
{
	unsigned char c = s[0];
	int need, i;
	int32_t v;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		need = 1;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 2;
		v = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0; /* no overlongs */
		else if (c == 0xed)
			hi = 0x9f; /* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 3;
		v = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f; /* <= U+10FFFF */
	} else {
		*cp = -1;
		return 1;
	}
	for (i = 1; i <= need; i++) {
		if ((size_t)i >= n || s[i] < lo || s[i] > hi) {
			*cp = -1;
			return i;
		}
		v = (v << 6) | (s[i] & 0x3f);
		lo = 0x80;
		hi = 0xbf;
	}
	*cp = v;
	return need + 1;
}

void ks_json_str_utf8(struct ks_json *j, const char *k, const char *s)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	size_t n = strlen((const char *)p);

	key(j, k);
	put(j, "\"");
	while (n && !j->overflow) {
		int32_t cp;
		int len = ks_utf8_next(p, n, &cp);

		if (cp == '"' || cp == '\\')
			put(j, "\\%c", (char)cp);
		else if (cp == '\n')
			put(j, "\\n");
		else if (cp == '\t')
			put(j, "\\t");
		else if (cp < 0)
			put(j, "\\ufffd");
		else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029)
			put(j, "\\u%04x", (unsigned)cp);
		else
			put(j, "%.*s", len, (const char *)p);
		p += len;
		n -= (size_t)len;
	}
	put(j, "\"");
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
