// SPDX-License-Identifier: MIT
// cpu <- /proc/stat: CPU time shares over the interval, ctxt/fork/intr counters.
#include "sources.h"

#include <cctype>

namespace ks {

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

// The next whitespace-separated word of line from i on (empty at the end).
static std::string_view next_word(std::string_view line, size_t &i)
{
	while (i < line.size() && is_space(line[i]))
		i++;
	size_t start = i;
	while (i < line.size() && !is_space(line[i]))
		i++;
	return line.substr(start, i - start);
}

ProcStat parse_proc_stat(std::string_view text)
{
	// Word by word: the intr and softirq lines hold one number per IRQ
	// (hundreds), of which only the first is wanted.
	ProcStat s;
	for (auto line : split_lines(text)) {
		size_t i = 0;
		std::string_view k = next_word(line, i);
		if (k.empty())
			continue;
		uint64_t v;
		if (k == "cpu") {
			s.have_cpu = true;
			for (std::string_view w = next_word(line, i); !w.empty() && to_u64(w, v); w = next_word(line, i))
				s.cpu.push_back(v);
		} else if (k.size() > 3 && k.substr(0, 3) == "cpu" && isdigit((unsigned char)k[3])) {
			s.cpu_count++;
		} else if (std::string_view w = next_word(line, i); !w.empty() && to_u64(w, v)) {
			// intr: the first number is the total, the rest are per-IRQ.
			if (k == "ctxt")
				s.ctxt = v;
			else if (k == "processes")
				s.processes = v;
			else if (k == "intr")
				s.intr = v;
			else if (k == "procs_running")
				s.procs_running = v;
			else if (k == "procs_blocked")
				s.procs_blocked = v;
		}
	}
	return s;
}

namespace {

// Columns of the aggregate cpu line that make up all CPU time.  guest and
// guest_nice (columns 9, 10) are already counted in user and nice.
constexpr int kCpuCols = 8;
const char *const kCpuPct[kCpuCols] = {"user_pct",   "nice_pct", "system_pct",  "idle_pct",
				       "iowait_pct", "irq_pct",  "softirq_pct", "steal_pct"};
const char *const kCpuName[kCpuCols] = {"user",   "nice", "system",  "idle",
					"iowait", "irq",  "softirq", "steal"};

class StatSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string path = c.proc_root + "/stat", text;
		bool ok = read_kept_or_warn(c, path, text);
		ProcStat s = parse_proc_stat(text);

		std::optional<uint64_t> cpu[kCpuCols];
		if (ok) {
			if (!s.have_cpu)
				c.warn.warn(path, "cpu", "aggregate cpu line missing");
			for (int i = 0; i < kCpuCols; i++) {
				if ((size_t)i < s.cpu.size())
					cpu[i] = s.cpu[i];
				else if (s.have_cpu)
					c.warn.warn(path, kCpuName[i],
						    std::string("cpu field ") + kCpuName[i] + " missing");
			}
		}
		auto want = [&](const char *name, std::optional<uint64_t> v) {
			if (ok && !v)
				c.warn.warn(path, name, std::string("field ") + name + " missing");
			return v;
		};
		std::optional<uint64_t> ctxt = want("ctxt", s.ctxt);
		std::optional<uint64_t> forks = want("processes", s.processes);
		std::optional<uint64_t> intr = want("intr", s.intr);
		std::optional<uint64_t> running = want("procs_running", s.procs_running);
		std::optional<uint64_t> blocked = want("procs_blocked", s.procs_blocked);

		// Shares of the interval's total CPU time.  If any column went
		// backwards the total is meaningless, so all shares are null.
		std::optional<uint64_t> d[kCpuCols];
		uint64_t total = 0;
		bool sane = true;
		for (int i = 0; i < kCpuCols; i++) {
			if (cpu[i] && prev_cpu_[i]) {
				d[i] = counter_delta(prev_cpu_[i], cpu[i]);
				if (!d[i])
					sane = false;
				else
					total += *d[i];
			}
		}

		Event e("cpu", c.ts_ns);
		e.u64("cpu_count", ok && s.cpu_count ? std::optional<uint64_t>(s.cpu_count)
						     : std::nullopt);
		for (int i = 0; i < kCpuCols; i++) {
			std::optional<double> pct;
			if (sane && total > 0 && d[i] && c.dt_s > 0)
				pct = 100.0 * (double)*d[i] / (double)total;
			e.f64(kCpuPct[i], pct);
		}
		e.u64("ctxt_total", ctxt);
		e.f64("ctxt_per_sec", counter_rate(prev_ctxt_, ctxt, c.dt_s));
		e.u64("forks_total", forks);
		e.u64("intr_total", intr);
		e.u64("procs_running", running);
		e.u64("procs_blocked", blocked);
		c.out.push_back(std::move(e));

		for (int i = 0; i < kCpuCols; i++)
			prev_cpu_[i] = cpu[i];
		prev_ctxt_ = ctxt;
	}

private:
	std::optional<uint64_t> prev_cpu_[kCpuCols];
	std::optional<uint64_t> prev_ctxt_;
};

const RegisterSource kRegister("stat", make_source<StatSource>);

} // namespace

} // namespace ks
