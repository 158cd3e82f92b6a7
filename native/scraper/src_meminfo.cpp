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

struct MemKey {
	const char *field, *key;
};
const MemKey kMemKeys[] = {
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

class MeminfoSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string path = c.proc_root + "/meminfo", text;
		bool ok = read_or_warn(c, path, text);
		U64Map m = parse_meminfo(text);
		Event e("memory", c.ts_ns);
		for (const MemKey &k : kMemKeys)
			e.u64(k.field, ok ? field_or_warn(c, path, m, k.key) : std::nullopt);
		c.out.push_back(std::move(e));
	}
};

const RegisterSource kRegister("meminfo", make_source<MeminfoSource>);

} // namespace

} // namespace ks
