// SPDX-License-Identifier: MIT
/*
 * ks-exec: one `exec` line per successful exec (sched:sched_process_exec),
 * the replacement for libbpf-tools execsnoop as the source of `exec` events:
 * execsnoop's syscalls:sys_enter/sys_exit_execve tracepoints switch on the
 * kernel's perf syscall probe for every syscall of every task; this tracer
 * runs once per exec and adds nothing to other syscalls.
 *
 * args is formatted as execsnoop -q prints it (and collectors/execsnoop.py
 * stores it): each argument in double quotes with a '"' inside written \",
 * separated by one space, the first 20 arguments then " ..." when there are
 * more, cut at 2048 characters (the last 3 becoming "...").  The arguments
 * are the new program's argv as /proc/PID/cmdline shows it (argv[0] as the
 * caller passed it; execsnoop shows the path given to exec() there instead).
 * Bytes that are not UTF-8 become U+FFFD (as the execsnoop collector's
 * decoding does), control characters are JSON-escaped, and a line that
 * would pass KS_LINE_MAX is cut further; args_truncated says when args does
 * not hold the whole argv.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/libbpf.h>

#include "exec.h"
#include "exec.skel.h"
#include "ks_tracer.h"

#define ARGS_MAX_ARGS 20    /* execsnoop's default --max-args */
#define ARGS_MAX_CHARS 2048 /* collectors/execsnoop.py ARGS_MAX */

static struct exec_bpf *skel;

/* argv (NUL-separated, len bytes; cut when cut) as execsnoop -q prints it,
 * into out (NUL-terminated); returns true when arguments were left out. */
static bool format_args(const char *a, size_t len, bool cut, char *out, size_t outsz)
{
	size_t i = 0, o = 0;
	int nargs = 0;
	bool more;

	while (i < len && nargs < ARGS_MAX_ARGS && o + 8 < outsz) {
		if (nargs)
			out[o++] = ' ';
		out[o++] = '"';
		for (; i < len && a[i] && o + 6 < outsz; i++) {
			if (a[i] == '"')
				out[o++] = '\\';
			out[o++] = a[i];
		}
		out[o++] = '"';
		nargs++;
		if (i < len && !a[i])
			i++;
	}
	more = i < len;
	if (more && nargs == ARGS_MAX_ARGS && o + 5 < outsz) {
		memcpy(out + o, " ...", 4);
		o += 4;
	}
	out[o] = 0;
	return more || cut;
}

/* Byte offset of the end of the first n characters of s (characters as
 * ks_json_str_utf8 and Python's decode("utf-8", "replace") count them), or
 * strlen(s) when s has no more than n. */
static size_t char_prefix(const char *s, size_t n, size_t *nchars)
{
	size_t len = strlen(s), off = 0, c = 0;

	while (off < len && c < n) {
		int32_t cp;

		off += (size_t)ks_utf8_next((const unsigned char *)s + off, len - off, &cp);
		c++;
	}
	*nchars = c;
	return off;
}

static int on_event(void *ctx, void *data, size_t size)
{
	static char args[2 * KS_EXEC_ARGS_MAX + 64];
	struct ks_tracer *t = ctx;
	const struct ks_exec_event *e = data;
	size_t hdr = offsetof(struct ks_exec_event, args), alen, keep = ARGS_MAX_CHARS, n;
	char comm[17];
	bool truncated;
	struct ks_json j;

	if (size < hdr)
		return 0;
	alen = e->args_len;
	if (alen > size - hdr)
		alen = size - hdr;
	if (alen > KS_EXEC_ARGS_MAX)
		alen = KS_EXEC_ARGS_MAX;
	truncated = format_args(e->args, alen, e->args_total > alen || e->read_err, args, sizeof(args));
	memcpy(comm, e->comm, 16);
	comm[16] = 0;
	for (;;) {
		size_t off = char_prefix(args, keep + 1, &n);
		char save[4];

		/* clip(): more than keep characters -> the first keep - 3 and "..." */
		if (n > keep) {
			off = char_prefix(args, keep - 3, &n);
			truncated = true;
		}
		memcpy(save, args + off, 4);
		if (off < strlen(args))
			memcpy(args + off, "...", 4);
		ks_json_begin(&j, "exec", e->ts + t->epoch_off_ns);
		ks_json_str_utf8(&j, "comm", comm);
		ks_json_u64(&j, "pid", e->pid);
		ks_json_u64(&j, "ppid", e->ppid);
		ks_json_i64(&j, "ret", 0);
		ks_json_str_utf8(&j, "args", args);
		ks_json_u64(&j, "uid", e->uid);
		ks_json_u64(&j, "cgroup_id", e->cgroup_id);
		ks_json_u64(&j, "args_truncated", truncated);
		memcpy(args + off, save, 4);
		if (!j.overflow || keep <= 64)
			break;
		/* escapes (\uXXXX is 6 bytes a character) would pass KS_LINE_MAX */
		keep = keep * 2 / 3;
	}
	ks_emit(t, &j, false);
	return 0;
}

static void tick(struct ks_tracer *t, double iv)
{
	(void)t;
	(void)iv;
}

static struct bpf_object_skeleton *open_skel(void)
{
	skel = exec_bpf__open();
	return skel ? skel->skeleton : NULL;
}

static int start(struct ks_tracer *t)
{
	snprintf(t->notes, sizeof(t->notes),
		 "successful execs only (sched_process_exec); args = the new argv from mm->arg_start (first %d bytes), "
		 "formatted as execsnoop -q: first %d arguments, %d characters",
		 KS_EXEC_ARGS_MAX, ARGS_MAX_ARGS, ARGS_MAX_CHARS);
	return 0;
}

static void close_skel(void)
{
	exec_bpf__destroy(skel);
}

static const struct ks_tracer_desc desc = {
	.name = "exec",
	.doc = "ks-exec: one line per successful exec (sched:sched_process_exec; no per-syscall cost), JSON lines.",
	.tp_category = "sched",
	.tps = { "sched_process_exec" },
	.fallback = "raw_tp",
	.open = open_skel,
	.start = start,
	.tick = tick,
	.on_event = on_event,
	.close = close_skel,
};

int main(int argc, char **argv)
{
	return ks_tracer_main(&desc, argc, argv);
}
