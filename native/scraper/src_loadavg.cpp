// SPDX-License-Identifier: MIT
// load <- /proc/loadavg (gauges only).
#include "sources.h"

namespace ks {

std::optional<LoadAvg> parse_loadavg(std::string_view text)
{
	auto w = split_ws(text);
	LoadAvg l;
	if (w.size() < 5)
		return std::nullopt;
	size_t slash = w[3].find('/');
	if (slash == std::string_view::npos)
		return std::nullopt;
	if (!to_f64(w[0], l.load_1min) || !to_f64(w[1], l.load_5min) ||
	    !to_f64(w[2], l.load_15min) || !to_u64(w[3].substr(0, slash), l.runnable) ||
	    !to_u64(w[3].substr(slash + 1), l.total) || !to_u64(w[4], l.last_pid))
		return std::nullopt;
	return l;
}

namespace {

class LoadavgSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string path = c.proc_root + "/loadavg", text;
		std::optional<LoadAvg> l;
		if (read_kept_or_warn(c, path, text)) {
			l = parse_loadavg(text);
			if (!l)
				c.warn.warn(path, "format", "unexpected format (want \"l1 l5 l15 r/t pid\")");
		}
		Event e("load", c.ts_ns);
		e.f64("load_1min", l ? std::optional<double>(l->load_1min) : std::nullopt);
		e.f64("load_5min", l ? std::optional<double>(l->load_5min) : std::nullopt);
		e.f64("load_15min", l ? std::optional<double>(l->load_15min) : std::nullopt);
		e.u64("runnable_tasks", l ? std::optional<uint64_t>(l->runnable) : std::nullopt);
		e.u64("total_tasks", l ? std::optional<uint64_t>(l->total) : std::nullopt);
		e.u64("last_pid", l ? std::optional<uint64_t>(l->last_pid) : std::nullopt);
		c.out.push_back(std::move(e));
	}
};

const RegisterSource kRegister("loadavg", make_source<LoadavgSource>);

} // namespace

} // namespace ks
