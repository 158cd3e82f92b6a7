// SPDX-License-Identifier: MIT
// memory <- /proc/meminfo (gauges only, no state).
#include "sources.h"

namespace ks {

U64Map parse_meminfo(std::string_view text)
{
	U64Map m;
	for (auto line : split_lines(text)) {
		size_t colon = line.find(':');
		if (colon == std::string_view::npos)
			continue;
		auto words = split_ws(line.substr(colon + 1));
		uint64_t v;
		if (!words.empty() && to_u64(words[0], v))
			m.emplace(std::string(line.substr(0, colon)), v);
	}
	return m;
}

namespace {

const FieldKey kMemKeys[] = {
	{"mem_total_kb", "MemTotal"},         {"mem_free_kb", "MemFree"},
	{"mem_available_kb", "MemAvailable"}, {"buffers_kb", "Buffers"},
	{"cached_kb", "Cached"},              {"swap_cached_kb", "SwapCached"},
	{"active_kb", "Active"},              {"inactive_kb", "Inactive"},
	{"active_anon_kb", "Active(anon)"},   {"inactive_anon_kb", "Inactive(anon)"},
	{"active_file_kb", "Active(file)"},   {"inactive_file_kb", "Inactive(file)"},
	{"dirty_kb", "Dirty"},                {"writeback_kb", "Writeback"},
	{"anon_pages_kb", "AnonPages"},       {"mapped_kb", "Mapped"},
	{"shmem_kb", "Shmem"},                {"slab_kb", "Slab"},
	{"sreclaimable_kb", "SReclaimable"},  {"sunreclaim_kb", "SUnreclaim"},
	{"page_tables_kb", "PageTables"},     {"commit_limit_kb", "CommitLimit"},
	{"committed_as_kb", "Committed_AS"},  {"swap_total_kb", "SwapTotal"},
	{"swap_free_kb", "SwapFree"},         {"hugepages_total", "HugePages_Total"},
	{"hugepages_free", "HugePages_Free"},
};

std::unique_ptr<Source> make_meminfo()
{
	return std::make_unique<KeyTableSource>("meminfo", "memory", parse_meminfo, kMemKeys);
}

const RegisterSource kRegister("meminfo", make_meminfo);

} // namespace

} // namespace ks
