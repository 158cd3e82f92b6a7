// SPDX-License-Identifier: MIT
// vmstat <- /proc/vmstat: paging, swapping, reclaim and OOM counters.
#include "sources.h"

namespace ks {

U64Map parse_vmstat(std::string_view text)
{
	U64Map m;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		uint64_t v;
		if (w.size() >= 2 && to_u64(w[1], v))
			m.emplace(std::string(w[0]), v);
	}
	return m;
}

namespace {

std::optional<uint64_t> sum(std::optional<uint64_t> a, std::optional<uint64_t> b)
{
	if (!a || !b)
		return std::nullopt;
	return *a + *b;
}

class VmstatSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string path = c.proc_root + "/vmstat", text;
		bool ok = read_or_warn(c, path, text);
		U64Map m = parse_vmstat(text);
		auto get = [&](const char *k) {
			return ok ? field_or_warn(c, path, m, k) : std::nullopt;
		};
		Cur cur;
		cur.pgfault = get("pgfault");
		cur.pgmajfault = get("pgmajfault");
		cur.pswpin = get("pswpin");
		cur.pswpout = get("pswpout");
		cur.pgscan_kswapd = get("pgscan_kswapd");
		cur.pgscan_direct = get("pgscan_direct");
		cur.pgsteal_kswapd = get("pgsteal_kswapd");
		cur.pgsteal_direct = get("pgsteal_direct");
		cur.oom_kill = get("oom_kill");
		auto nr_dirty = get("nr_dirty");
		auto nr_writeback = get("nr_writeback");
		double dt = c.dt_s;

		Event e("vmstat", c.ts_ns);
		e.u64("pgfault_total", cur.pgfault);
		e.u64("pgmajfault_total", cur.pgmajfault);
		e.u64("pswpin_total", cur.pswpin);
		e.u64("pswpout_total", cur.pswpout);
		e.u64("pgscan_kswapd_total", cur.pgscan_kswapd);
		e.u64("pgscan_direct_total", cur.pgscan_direct);
		e.u64("pgsteal_kswapd_total", cur.pgsteal_kswapd);
		e.u64("pgsteal_direct_total", cur.pgsteal_direct);
		e.u64("oom_kill_total", cur.oom_kill);
		e.u64("nr_dirty", nr_dirty);
		e.u64("nr_writeback", nr_writeback);
		e.f64("pgfault_per_sec", counter_rate(prev_.pgfault, cur.pgfault, dt));
		e.f64("pgmajfault_per_sec", counter_rate(prev_.pgmajfault, cur.pgmajfault, dt));
		e.f64("pswpin_per_sec", counter_rate(prev_.pswpin, cur.pswpin, dt));
		e.f64("pswpout_per_sec", counter_rate(prev_.pswpout, cur.pswpout, dt));
		e.f64("pgscan_per_sec",
		      counter_rate(sum(prev_.pgscan_kswapd, prev_.pgscan_direct),
				   sum(cur.pgscan_kswapd, cur.pgscan_direct), dt));
		e.f64("pgsteal_per_sec",
		      counter_rate(sum(prev_.pgsteal_kswapd, prev_.pgsteal_direct),
				   sum(cur.pgsteal_kswapd, cur.pgsteal_direct), dt));
		// A delta, not a rate, but it also needs a previous read.
		e.u64("oom_kill_delta", dt > 0 ? counter_delta(prev_.oom_kill, cur.oom_kill)
					       : std::nullopt);
		c.out.push_back(std::move(e));
		prev_ = cur;
	}

private:
	struct Cur {
		std::optional<uint64_t> pgfault, pgmajfault, pswpin, pswpout, pgscan_kswapd,
			pgscan_direct, pgsteal_kswapd, pgsteal_direct, oom_kill;
	} prev_;
};

const RegisterSource kRegister("vmstat", make_source<VmstatSource>);

} // namespace

} // namespace ks
