// SPDX-License-Identifier: MIT
//
// The /proc + /sys scraper core.  One Scraper is used by both faces: the
// ks-scraper binary (main.cpp) and the kernelsight._scraper module
// (pymodule.cpp).  collect() returns Events; event_to_line() turns one into
// the JSON line both faces emit, so they cannot disagree.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

struct ks_json;

namespace ks {

// One key of an event.  Keys are string literals from the sources.
struct Field {
	enum Kind { Null, U64, I64, F64, Str };
	explicit Field(const char *k) : key(k) {}
	const char *key;
	Kind kind = Null;
	uint64_t u = 0;
	int64_t i = 0;
	double f = 0;
	std::string s;
};

struct Event {
	std::string type;
	uint64_t ts_ns = 0;
	std::vector<Field> fields;

	Event(std::string t, uint64_t ts) : type(std::move(t)), ts_ns(ts) { fields.reserve(32); }
	void u64(const char *key, std::optional<uint64_t> v);
	void i64(const char *key, std::optional<int64_t> v);
	void f64(const char *key, std::optional<double> v); // non-finite -> null
	void str(const char *key, const std::string &v);
	const Field *find(const std::string &key) const;
};

// Builds the JSON line ("...}\n") in j; returns 0, or -1 when it does not
// fit in KS_LINE_MAX (j then holds nothing worth writing).
int event_to_json(const Event &e, struct ks_json *j);
// Same, as a string; empty when the line does not fit.
std::string event_to_line(const Event &e);

// Warn once per (file, field) for the life of the Scraper: a kernel without
// PSI should say so once, not every second.
class Warnings {
public:
	void warn(const std::string &file, const std::string &field, const std::string &msg);
	const std::vector<std::string> &list() const { return list_; }
	size_t count() const { return list_.size(); }
	// Called with each new warning (the binary prints to stderr).
	std::function<void(const std::string &)> sink;

private:
	std::set<std::pair<std::string, std::string>> seen_;
	std::vector<std::string> list_;
};

// Settings a source may read (flags of ks-scraper, keywords of the module).
struct Options {
	size_t cgroups_max = 64; // cgroup lines per read (src_cgroup.cpp)
};

class TcpSockets; // sources.h
class FileCache;  // sources.h
class ProcList;   // sources.h

// What every source gets for one collect.
struct Ctx {
	const std::string &proc_root;
	const std::string &sys_root;
	Warnings &warn;
	uint64_t ts_ns;
	double dt_s; // seconds since the previous collect; NaN on the first
	std::vector<Event> &out;
	const Options &opt;
	TcpSockets &tcp; // the TCP sockets, read once per collect
	FileCache &files; // the few files every collect reads, kept open
	ProcList &procs;  // the processes of PROC, listed once per collect
};

class Source {
public:
	virtual ~Source() = default;
	virtual void collect(Ctx &c) = 0;
};

class Scraper {
public:
	explicit Scraper(std::string proc_root = "/proc", std::string sys_root = "/sys");
	~Scraper();
	Scraper(const Scraper &) = delete;
	Scraper &operator=(const Scraper &) = delete;

	// ts from CLOCK_REALTIME, elapsed time from CLOCK_MONOTONIC.
	std::vector<Event> collect();
	// Explicit clocks (tests, replay): ts_ns stamps the events, clock_ns
	// (any monotonic ns clock) gives the elapsed time for rates.
	std::vector<Event> collect_at(uint64_t ts_ns, uint64_t clock_ns);

	Warnings &warnings() { return warn_; }
	Options &options() { return opt_; }
	const std::string &proc_root() const { return proc_root_; }
	const std::string &sys_root() const { return sys_root_; }
	void set_proc_root(std::string p) { proc_root_ = std::move(p); }
	void set_sys_root(std::string p) { sys_root_ = std::move(p); }

private:
	std::string proc_root_, sys_root_;
	Warnings warn_;
	Options opt_;
	std::optional<uint64_t> last_clock_ns_;
	std::vector<std::unique_ptr<Source>> sources_;
	std::unique_ptr<TcpSockets> tcp_;
	std::unique_ptr<FileCache> files_;
	std::unique_ptr<ProcList> procs_;
	size_t last_events_ = 0; // events of the last collect: the next one's reserve
};

} // namespace ks
