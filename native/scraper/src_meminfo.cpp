// SPDX-License-Identifier: MIT
// memory <- /proc/meminfo (gauges only, no state).
#include "sources.h"

namespace ks {

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

// "Key:   123 kB": the key is all before the first ':', the value the first
// word after it.
bool meminfo_line(std::string_view line, std::string_view &key, uint64_t &value)
{
	size_t colon = line.find(':');
	if (colon == std::string_view::npos)
		return false;
	size_t i = colon + 1;
	while (i < line.size() && is_space(line[i]))
		i++;
	size_t start = i;
	while (i < line.size() && !is_space(line[i]))
		i++;
	if (i == start || !to_u64(line.substr(start, i - start), value))
		return false;
	key = line.substr(0, colon);
	return true;
}

U64Map parse_meminfo(std::string_view text)
{
	U64Map m;
	for (auto line : split_lines(text)) {
		std::string_view k;
		uint64_t v;
		if (meminfo_line(line, k, v))
			m.emplace(std::string(k), v);
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
	return std::make_unique<KeyTableSource>("meminfo", "memory", meminfo_line, kMemKeys);
}

const RegisterSource kRegister("meminfo", make_meminfo);

} // namespace

} // namespace ks
