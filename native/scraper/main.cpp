// SPDX-License-Identifier: MIT
//
// ks-scraper: read /proc and /sys every interval and write one JSON line per
// event (schema/events/scraper.json) plus a producer_stats line, to stdout or
// the KernelSight FIFO.  Data on stdout, logs on stderr.
#include "ks_scraper.h"

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <getopt.h>
#include <string>
#include <unistd.h>

#include "ks_json.h"
#include "ks_out.h"

namespace {

const char *const kProg = "ks-scraper";
volatile sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

struct Options {
	double interval_s = 1.0;
	uint64_t count = 0; // 0: until signalled
	const char *output = "-";
	std::string proc_root = "/proc";
	std::string sys_root = "/sys";
	uint64_t cgroups_max = 64;
	bool verbose = false;
};

void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [OPTIONS]\n"
		"Read /proc and /sys every interval and write JSON lines (schema/events/scraper.json).\n"
		"\n"
		"  -i, --interval SECONDS  time between reads, may be fractional (default 1)\n"
		"  -c, --count N           stop after N reads; 0 runs until SIGINT/SIGTERM (default 0)\n"
		"  -o, --output PATH       '-' for stdout (default) or a FIFO, e.g. %s\n"
		"      --proc-root DIR     procfs mount to read (default /proc)\n"
		"      --sys-root DIR      sysfs mount to read (default /sys)\n"
		"      --cgroups-max N     cgroup lines per read: those near their memory limit,\n"
		"                          then the busiest (default 64)\n"
		"  -v, --verbose           log each read to stderr\n"
		"  -h, --help              show this help\n",
		kProg, KS_DEFAULT_FIFO);
}

int bad_arg(const char *fmt, const char *what)
{
	fprintf(stderr, "%s: ", kProg);
	fprintf(stderr, fmt, what);
	fprintf(stderr, " (see --help)\n");
	return 2;
}

// 0: run, 1: --help done, 2: bad arguments (message printed).
int parse_args(int argc, char **argv, Options &o)
{
	enum { OPT_PROC_ROOT = 256, OPT_SYS_ROOT, OPT_CGROUPS_MAX };
	static const struct option longopts[] = {
		{"interval", required_argument, nullptr, 'i'},
		{"count", required_argument, nullptr, 'c'},
		{"output", required_argument, nullptr, 'o'},
		{"proc-root", required_argument, nullptr, OPT_PROC_ROOT},
		{"sys-root", required_argument, nullptr, OPT_SYS_ROOT},
		{"cgroups-max", required_argument, nullptr, OPT_CGROUPS_MAX},
		{"verbose", no_argument, nullptr, 'v'},
		{"help", no_argument, nullptr, 'h'},
		{nullptr, 0, nullptr, 0},
	};
	opterr = 0; // we print one line of our own
	int opt;
	while ((opt = getopt_long(argc, argv, ":i:c:o:vh", longopts, nullptr)) != -1) {
		char *end = nullptr;
		switch (opt) {
		case 'i':
			errno = 0;
			o.interval_s = strtod(optarg, &end);
			if (errno || end == optarg || *end || !std::isfinite(o.interval_s) ||
			    o.interval_s < 0.001 || o.interval_s > 86400)
				return bad_arg("--interval wants seconds between 0.001 and 86400, got '%s'",
					       optarg);
			break;
		case 'c':
			errno = 0;
			o.count = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-')
				return bad_arg("--count wants a whole number >= 0, got '%s'", optarg);
			break;
		case 'o':
			o.output = optarg;
			break;
		case OPT_PROC_ROOT:
			o.proc_root = optarg;
			break;
		case OPT_SYS_ROOT:
			o.sys_root = optarg;
			break;
		case OPT_CGROUPS_MAX:
			errno = 0;
			o.cgroups_max = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-' || o.cgroups_max > 100000)
				return bad_arg("--cgroups-max wants a whole number from 0 to 100000, got '%s'", optarg);
			break;
		case 'v':
			o.verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 1;
		case ':':
			return bad_arg("option %s needs a value", argv[optind - 1]);
		default:
			return bad_arg("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return bad_arg("unexpected argument '%s'", argv[optind]);
	return 0;
}

// Returns ks_out_write_line's result; a line that did not fit is counted
// as oversize by ks_out (len 0 is "not built").
int write_json(struct ks_out &out, struct ks_json &j, int built)
{
	return ks_out_write_line(&out, j.buf, built == 0 ? j.len : 0);
}

int write_stats(struct ks_out &out, uint64_t warnings)
{
	struct ks_json j;
	ks_json_begin(&j, "producer_stats", ks_now_epoch_ns());
	ks_json_str(&j, "producer", kProg);
	ks_json_u64(&j, "pid", (uint64_t)getpid());
	ks_out_json_counters(&out, &j);
	ks_json_u64(&j, "warnings_total", warnings);
	return write_json(out, j, ks_json_end(&j));
}

// Sleeps until CLOCK_MONOTONIC reaches deadline_ns; false if a signal asked us to stop.
bool sleep_until(uint64_t deadline_ns)
{
	struct timespec ts = {(time_t)(deadline_ns / 1000000000ULL), (long)(deadline_ns % 1000000000ULL)};
	for (;;) {
		int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
		if (g_stop)
			return false;
		if (rc != EINTR)
			return true;
	}
}

} // namespace

int main(int argc, char **argv)
{
	Options o;
	int rc = parse_args(argc, argv, o);
	if (rc)
		return rc == 1 ? 0 : 2;

	struct ks_out out;
	char err[512];
	if (ks_out_open_producer(&out, o.output, 100, kProg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", kProg, err);
		return 1;
	}
	// No SA_RESTART: a signal must cut the sleep short.
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, nullptr);
	sigaction(SIGTERM, &sa, nullptr);
	// A closed stdout is reported as EPIPE by ks_out and ends the run.
	signal(SIGPIPE, SIG_IGN);

	ks::Scraper scraper(o.proc_root, o.sys_root);
	scraper.options().cgroups_max = (size_t)o.cgroups_max;
	scraper.warnings().sink = [](const std::string &w) {
		fprintf(stderr, "%s: warning: %s\n", kProg, w.c_str());
	};

	const uint64_t interval_ns = (uint64_t)std::llround(o.interval_s * 1e9);
	const uint64_t start_ns = ks_now_mono_ns();
	uint64_t tick = 0;
	bool stdout_closed = false;
	for (uint64_t n = 0; !g_stop && (o.count == 0 || n < o.count); n++) {
		if (n > 0) {
			// Ticks sit on start + k*interval so the cadence does not drift
			// with the time each read takes.  Running late (a slow read,
			// a stopped process): read now and stay on the grid.
			tick++;
			uint64_t next = start_ns + tick * interval_ns, now = ks_now_mono_ns();
			if (now >= next)
				tick = (now - start_ns) / interval_ns;
			else if (!sleep_until(next))
				break;
		}
		uint64_t t0 = ks_now_mono_ns();
		std::vector<ks::Event> events = scraper.collect();
		struct ks_json j;
		for (const ks::Event &e : events) {
			if (write_json(out, j, ks::event_to_json(e, &j)) == -2) {
				stdout_closed = true;
				break;
			}
		}
		if (stdout_closed || write_stats(out, scraper.warnings().count()) == -2) {
			stdout_closed = true;
			break;
		}
		if (o.verbose)
			fprintf(stderr, "%s: read %" PRIu64 ": %zu events in %.2f ms, %" PRIu64 " lines written\n",
				kProg, n + 1, events.size(), (double)(ks_now_mono_ns() - t0) / 1e6,
				out.c.lines_written);
	}
	if (!stdout_closed)
		write_stats(out, scraper.warnings().count());
	if (o.verbose)
		fprintf(stderr, "%s: exiting%s\n", kProg, g_stop ? " on signal" : "");
	ks_out_close(&out);
	return 0;
}
