// SPDX-License-Identifier: MIT
// tcp_retrans <- /proc/net/snmp (Tcp:) + /proc/net/netstat (TcpExt:).
#include "sources.h"

namespace ks {

I64Map parse_snmp_section(std::string_view text, std::string_view prefix)
{
	// Each section is a header line of names followed by a line of values,
	// both starting with "Prefix:".
	I64Map m;
	std::vector<std::string_view> names;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		if (w.empty() || w[0].size() != prefix.size() + 1 || w[0].substr(0, prefix.size()) != prefix ||
		    w[0].back() != ':')
			continue;
		if (names.empty()) {
			names.assign(w.begin() + 1, w.end());
			continue;
		}
		for (size_t i = 1; i < w.size() && i - 1 < names.size(); i++) {
			int64_t v;
			uint64_t u;
			if (to_i64(w[i], v))
				m.emplace(std::string(names[i - 1]), v);
			else if (to_u64(w[i], u)) // above INT64_MAX: keep the low bits honest
				m.emplace(std::string(names[i - 1]), (int64_t)(u & INT64_MAX));
		}
		names.clear();
	}
	return m;
}

namespace {

struct Key {
	const char *field, *section, *name;
};
// In the schema's field order.
const Key kKeys[] = {
	{"retrans_segs_total", "Tcp", "RetransSegs"},
	{"out_segs_total", "Tcp", "OutSegs"},
	{"in_segs_total", "Tcp", "InSegs"},
	{"in_errs_total", "Tcp", "InErrs"},
	{"active_opens_total", "Tcp", "ActiveOpens"},
	{"passive_opens_total", "Tcp", "PassiveOpens"},
	{"attempt_fails_total", "Tcp", "AttemptFails"},
	{"estab_resets_total", "Tcp", "EstabResets"},
	{"curr_estab", "Tcp", "CurrEstab"},
	{"listen_overflows_total", "TcpExt", "ListenOverflows"},
	{"listen_drops_total", "TcpExt", "ListenDrops"},
	{"syn_retrans_total", "TcpExt", "TCPSynRetrans"},
};
constexpr size_t kN = sizeof(kKeys) / sizeof(kKeys[0]);

class TcpRetransSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string snmp_path = c.proc_root + "/net/snmp", netstat_path = c.proc_root + "/net/netstat";
		std::string snmp_text, netstat_text;
		bool snmp_ok = read_or_warn(c, snmp_path, snmp_text);
		bool netstat_ok = read_or_warn(c, netstat_path, netstat_text);
		I64Map tcp = parse_snmp_section(snmp_text, "Tcp");
		I64Map ext = parse_snmp_section(netstat_text, "TcpExt");

		std::array<std::optional<uint64_t>, kN> cur;
		for (size_t i = 0; i < kN; i++) {
			bool is_tcp = kKeys[i].section[3] == '\0';
			if (!(is_tcp ? snmp_ok : netstat_ok))
				continue;
			const I64Map &m = is_tcp ? tcp : ext;
			auto it = m.find(kKeys[i].name);
			if (it == m.end())
				c.warn.warn(is_tcp ? snmp_path : netstat_path, kKeys[i].name,
					    std::string("field ") + kKeys[i].section + " " + kKeys[i].name + " missing");
			else if (it->second >= 0) // all of these are unsigned counters
				cur[i] = (uint64_t)it->second;
		}
		Event e("tcp_retrans", c.ts_ns);
		for (size_t i = 0; i < kN; i++)
			e.u64(kKeys[i].field, cur[i]);
		c.out.push_back(std::move(e));
	}
};

const RegisterSource kRegister("tcp_retrans", make_source<TcpRetransSource>);

} // namespace

} // namespace ks
