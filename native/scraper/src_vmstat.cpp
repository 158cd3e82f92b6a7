// SPDX-License-Identifier: MIT
// vmstat <- /proc/vmstat: paging, swapping, reclaim and OOM counters.
#include "sources.h"

namespace ks {

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

// "key 123": the first two words of the line.
bool vmstat_line(std::string_view line, std::string_view &key, uint64_t &value)
{
	size_t i = 0;
	while (i < line.size() && is_space(line[i]))
		i++;
	size_t k0 = i;
	while (i < line.size() && !is_space(line[i]))
		i++;
	size_t k1 = i;
	while (i < line.size() && is_space(line[i]))
		i++;
	size_t v0 = i;
	while (i < line.size() && !is_space(line[i]))
		i++;
	if (k1 == k0 || i == v0 || !to_u64(line.substr(v0, i - v0), value))
		return false;
	key = line.substr(k0, k1 - k0);
	return true;
}

U64Map parse_vmstat(std::string_view text)
{
	U64Map m;
	for (auto line : split_lines(text)) {
		std::string_view k;
		uint64_t v;
		if (vmstat_line(line, k, v))
			m.emplace(std::string(k), v);
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
	return std::make_unique<KeyTableSource>("vmstat", "vmstat", vmstat_line, kVmKeys);
}

const RegisterSource kRegister("vmstat", make_vmstat);

} // namespace

} // namespace ks
