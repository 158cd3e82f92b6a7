// SPDX-License-Identifier: MIT
//
// Per-process /proc reading for the agent's samplers (kernelsight.agent.attribution
// ProcessSampler, kernelsight.agent.exhaustion WriterSampler), exposed by
// kernelsight._scraper.  Not part of the scraper core: the ks-scraper binary
// does not read every process.
//
// The Python parsers (parse_proc_sample, _status_int, parse_proc_io) stay the
// definition.  Each reader here reads the same bytes the same way (one read()
// of at most READ_MAX bytes per file) and parses the plain case: every number it
// uses is a run of ASCII digits that fits in 64 bits, with the whitespace int()
// would strip around it.  Anything else (junk, a sign, an underscore, a huge
// number, a non-ASCII state) is handed back as the raw bytes that were read,
// for the Python parser to decide: the result is then the Python one by
// construction, and no input can crash the reader.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

namespace ks::procs {

constexpr size_t READ_MAX = 16384; // slurp()'s size

enum class Got : uint8_t {
	None,   // unreadable (gone, no permission, absent), or definitely does not parse
	Parsed, // the fields below hold the values
	Raw,    // not the plain case: the raw bytes are kept for the Python parser
};

// ProcSample's fields, in its constructor's order after comm and state.
struct ProcFields {
	std::string comm;  // the bytes between the first '(' and the last ')'
	std::string state; // ASCII
	uint64_t rss_kb = 0, cpu_ticks = 0, minflt = 0, majflt = 0, ctxt = 0, nonvol_ctxt = 0;
	uint64_t start_ticks = 0, ppid = 0, threads = 0;
};

struct ProcEntry {
	uint64_t pid = 0;
	Got stat = Got::None;
	ProcFields f;
	std::string stat_raw, status_raw; // with Got::Raw
	Got io = Got::None;
	uint64_t wchar = 0, read_bytes = 0, write_bytes = 0;
	std::string io_raw; // with Got::Raw
};

// Every entry of proc_root whose name is ASCII digits, in directory order:
// PID/stat + PID/status when want_stat, PID/io when want_io.  An entry is kept
// when either part is not Got::None.  err: 0, or the errno of listing
// proc_root (os.scandir would raise: nothing is returned).
std::vector<ProcEntry> read_procs(const std::string &proc_root, uint64_t page_kb, bool want_stat, bool want_io,
				  int &err);

// Context switches summed over /proc/PID/task/*/status (voluntary + nonvoluntary,
// nonvoluntary) as attribution._ctxt_of_threads: a thread gone meanwhile is
// skipped, an unreadable task directory is None, a status that is not the plain
// case is Raw (no bytes kept: the caller reads that process again itself).
struct ThreadCtxt {
	Got got = Got::None;
	uint64_t ctxt = 0, nonvol_ctxt = 0;
};
ThreadCtxt ctxt_of_threads(const std::string &proc_root, uint64_t pid);

// Event-loop threads (ProcessSampler._sample_loops): over pids in order, each
// thread of /proc/PID/task in directory order while budget lasts (every thread
// listed costs one, known or not); a thread is a loop when its tid is in known
// or its wchan reads exactly "do_epoll_wait".  For each loop thread, in order of
// first sight, the second field of its schedstat (run_delay, ns).
struct LoopThread {
	uint64_t pid = 0, tid = 0;
	Got got = Got::None; // Parsed or Raw: a thread whose schedstat is unreadable is left out
	uint64_t run_delay_ns = 0;
	std::string raw; // with Got::Raw: schedstat's bytes
};
std::vector<LoopThread> loop_threads(const std::string &proc_root, const std::vector<uint64_t> &pids,
				     const std::unordered_set<uint64_t> &known, int64_t budget);

} // namespace ks::procs
