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

const FieldKey kVmKeys[] = {
	{"pgfault_total", "pgfault"},
	{"pgmajfault_total", "pgmajfault"},
	{"pswpin_total", "pswpin"},
	{"pswpout_total", "pswpout"},
	{"pgscan_kswapd_total", "pgscan_kswapd"},
	{"pgscan_direct_total", "pgscan_direct"},
	{"pgsteal_kswapd_total", "pgsteal_kswapd"},
	{"pgsteal_direct_total", "pgsteal_direct"},
	{"oom_kill_total", "oom_kill"},
	{"nr_dirty", "nr_dirty"},
	{"nr_writeback", "nr_writeback"},
};

std::unique_ptr<Source> make_vmstat()
{
	return std::make_unique<KeyTableSource>("vmstat", "vmstat", parse_vmstat, kVmKeys);
}

const RegisterSource kRegister("vmstat", make_vmstat);

} // namespace

} // namespace ks
