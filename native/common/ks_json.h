/* SPDX-License-Identifier: MIT */
/*
 * ks_json: build one JSON event line in a fixed KS_LINE_MAX buffer.
 *
 *   struct ks_json j;
 *   ks_json_begin(&j, "syscall", ts_ns);
 *   ks_json_u64(&j, "pid", pid);
 *   ks_json_str(&j, "comm", comm);
 *   if (ks_json_end(&j) == 0) ks_out_write_line(&out, j.buf, j.len);
 *
 * Overflow is sticky: any key that does not fit marks the line as oversize
 * and ks_json_end() returns -1, so a truncated line is never written.
 * Non-finite doubles become null (JSON has no NaN).
 */
#ifndef KS_JSON_H
#define KS_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "ks_out.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ks_json {
	char buf[KS_LINE_MAX + 1];
	size_t len;
	int overflow;
	int nfields;
};

void ks_json_begin(struct ks_json *j, const char *type, uint64_t ts_ns);
void ks_json_u64(struct ks_json *j, const char *key, uint64_t v);
void ks_json_i64(struct ks_json *j, const char *key, int64_t v);
void ks_json_f64(struct ks_json *j, const char *key, double v); /* NaN/inf -> null */
void ks_json_str(struct ks_json *j, const char *key, const char *s);
/* Like ks_json_str, but valid UTF-8 is kept as is (ks_json_str escapes every
 * byte outside printable ASCII as \u00XX); each ill-formed sequence becomes
 * U+FFFD as Python's bytes.decode("utf-8", "replace") does; control
 * characters, DEL, C1 controls and U+2028/U+2029 are \u-escaped. */
void ks_json_str_utf8(struct ks_json *j, const char *key, const char *s);
/* One code point of the n bytes at s: returns its length (1-4) with *cp set,
 * or for an ill-formed sequence the length of its maximal subpart (>= 1,
 * Unicode's "U+FFFD substitution of maximal subparts") with *cp = -1. */
int ks_utf8_next(const unsigned char *s, size_t n, int32_t *cp);
void ks_json_null(struct ks_json *j, const char *key);
void ks_json_u64_array(struct ks_json *j, const char *key, const uint64_t *v, size_t n);
/* Appends "}\n"; returns 0, or -1 if the line did not fit. */
int ks_json_end(struct ks_json *j);

#ifdef __cplusplus
}
#endif

#endif /* KS_JSON_H */
