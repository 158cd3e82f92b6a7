// SPDX-License-Identifier: MIT
//
// One small unit per kernel source, src_<name>.cpp: a pure parser over the
// file's text (unit tested on fixtures) and a Source that reads the file and
// emits one event type.  The unit registers its Source itself (RegisterSource
// below); the build compiles every src_*.cpp, so nothing else lists sources.
//
// Events carry what the kernel reports: counters (*_total) and gauges.  Rates
// over a window are derived once, in the feature catalog
// (pipeline/kernelsight/features/catalog.py).  The per-interval values still
// made here each have a reader: cpu *_pct and block util_pct (the catalog,
// per row) and cpu ctxt_per_sec (a cross-check in tests/test_features_io.py).
#pragma once

#include "ks_scraper.h"

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ks {

// ---- text helpers (util.cpp) ----
std::vector<std::string_view> split_lines(std::string_view text);
std::vector<std::string_view> split_ws(std::string_view line);
bool to_u64(std::string_view s, uint64_t &v);
bool to_i64(std::string_view s, int64_t &v);
bool to_f64(std::string_view s, double &v);
// Reads a whole file (procfs files report size 0, so read to EOF).
// Returns 0 or an errno.
int read_file(const std::string &path, std::string &out);
// Reads path, or warns once "cannot read" and returns false.
bool read_or_warn(Ctx &c, const std::string &path, std::string &out);

// ---- interval deltas (util.cpp), for the few shares computed per read ----
// Counters only grow.  One lower than last time was reset (device
// re-created, a restored tree) or wrapped: the true delta is unknown, so the
// interval's delta and rate are null rather than negative or ~2^64/dt.
std::optional<uint64_t> counter_delta(std::optional<uint64_t> prev, std::optional<uint64_t> cur);
std::optional<double> counter_rate(std::optional<uint64_t> prev, std::optional<uint64_t> cur,
				   double dt_s);

using U64Map = std::map<std::string, uint64_t, std::less<>>;
using I64Map = std::map<std::string, int64_t, std::less<>>;
// Value of key, or a warning naming (file, key) and nullopt.
std::optional<uint64_t> field_or_warn(Ctx &c, const std::string &file, const U64Map &m,
				      const char *key);

// ---- parsers ----
// /proc/meminfo: "Key:   123 kB" (values as written, i.e. KiB or pages).
U64Map parse_meminfo(std::string_view text);
// /proc/vmstat: "key 123".
U64Map parse_vmstat(std::string_view text);

struct LoadAvg {
	double load_1min, load_5min, load_15min;
	uint64_t runnable, total, last_pid;
};
// /proc/loadavg: "0.79 0.36 0.40 1/123 4567".
std::optional<LoadAvg> parse_loadavg(std::string_view text);

struct ProcStat {
	std::vector<uint64_t> cpu; // aggregate "cpu" line: user nice system idle iowait irq softirq steal ...
	bool have_cpu = false;
	uint64_t cpu_count = 0;    // "cpuN" lines
	std::optional<uint64_t> ctxt, processes, intr, procs_running, procs_blocked;
};
ProcStat parse_proc_stat(std::string_view text);

// Whitespace-separated unsigned numbers (/sys/block/*/stat).
std::vector<uint64_t> parse_numbers(std::string_view text);

struct NetDevRow {
	std::string name;
	std::vector<uint64_t> v; // 16 columns: rx bytes packets errs drop fifo frame compressed multicast, tx ...
};
std::vector<NetDevRow> parse_net_dev(std::string_view text);

// Adds one to counts[st] per socket line of /proc/net/tcp{,6}; returns the
// number of socket lines.
uint64_t count_tcp_states(std::string_view text, std::array<uint64_t, 16> &counts);

// "Prefix: Name1 Name2\nPrefix: 1 2" pairs of /proc/net/snmp and /proc/net/netstat.
I64Map parse_snmp_section(std::string_view text, std::string_view prefix);

struct PsiLine {
	double avg10, avg60, avg300;
	uint64_t total_us;
};
struct Psi {
	std::optional<PsiLine> some, full;
};
Psi parse_psi(std::string_view text);

// ---- the source registry (scraper.cpp) ----
using SourceFactory = std::unique_ptr<Source> (*)();
using SourceRegistry = std::map<std::string, SourceFactory, std::less<>>;

// One namespace-scope object per src_<name>.cpp:
//   const RegisterSource kRegister("name", make_source<NameSource>);
// Every Scraper gets one instance of each registered Source and collects
// them in name order, so the order of events does not depend on link order.
// A name registered twice aborts at start-up.
struct RegisterSource {
	RegisterSource(const char *name, SourceFactory make);
};
template <class S> std::unique_ptr<Source> make_source() { return std::make_unique<S>(); }

// A source that is one file of "key value" pairs mapped onto one event's
// fields (meminfo, vmstat): the file's parser, and field <- key pairs.
struct FieldKey {
	const char *field, *key;
};
class KeyTableSource : public Source {
public:
	template <size_t N>
	KeyTableSource(const char *file, const char *type, U64Map (*parse)(std::string_view),
		       const FieldKey (&keys)[N])
		: file_(file), type_(type), parse_(parse), keys_(keys), n_keys_(N)
	{
	}
	void collect(Ctx &c) override;

private:
	const char *file_, *type_;
	U64Map (*parse_)(std::string_view);
	const FieldKey *keys_;
	size_t n_keys_;
};
const SourceRegistry &registered_sources();

} // namespace ks
