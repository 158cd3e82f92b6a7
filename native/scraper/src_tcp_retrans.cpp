// SPDX-License-Identifier: MIT
// tcp_retrans <- /proc/net/snmp (Tcp:) + /proc/net/netstat (TcpExt:).
#include "sources.h"

#include <algorithm>
#include <cstring>

#include <dirent.h>
#include <sys/stat.h>

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

// Network namespaces other than the scraper's own are read through one of their
// processes (/proc/PID/net/snmp is that process's namespace): traffic between
// containers, or over a veth pair into a namespace, never shows in the host's
// counters.  Bounded: at most kMaxNetns namespaces per interval.
constexpr size_t kMaxNetns = 64;
constexpr size_t kMaxInterfacesChars = 200;

std::optional<uint64_t> ns_inode(const std::string &path)
{
	struct stat st;
	if (stat(path.c_str(), &st) != 0)
		return std::nullopt;
	return (uint64_t)st.st_ino;
}

// "veth0,eth0" from that namespace's /proc/PID/net/dev, lo left out (it is in every one).
std::string interfaces_of(const std::string &net_dir)
{
	std::string text, out;
	if (read_file(net_dir + "/dev", text) != 0)
		return out;
	for (const NetDevRow &r : parse_net_dev(text)) {
		if (r.name == "lo")
			continue;
		if (out.size() + r.name.size() + 1 > kMaxInterfacesChars)
			break;
		out += (out.empty() ? "" : ",") + r.name;
	}
	return out;
}

class TcpRetransSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::optional<uint64_t> own = ns_inode(c.proc_root + "/self/ns/net");
		emit(c, c.proc_root + "/net", own, true);
		// Other namespaces, through the first process found in each.
		std::vector<uint64_t> seen;
		if (own)
			seen.push_back(*own);
		DIR *d = opendir(c.proc_root.c_str());
		if (d == nullptr)
			return;
		while (struct dirent *de = readdir(d)) {
			if (de->d_name[0] < '1' || de->d_name[0] > '9')
				continue;
			// pid 1's ns/net refuses even root here (EACCES, counted by ks-syscall as a
			// storage error every second); init shares the host's namespace anyway.
			if (strcmp(de->d_name, "1") == 0)
				continue;
			std::string pid_dir = c.proc_root + "/" + de->d_name;
			auto ino = ns_inode(pid_dir + "/ns/net");
			if (!ino || std::find(seen.begin(), seen.end(), *ino) != seen.end())
				continue;
			seen.push_back(*ino);
			if (seen.size() > kMaxNetns) {
				c.warn.warn(c.proc_root, "ns/net", "more than 64 network namespaces: the rest not read");
				break;
			}
			emit(c, pid_dir + "/net", ino, false);
		}
		closedir(d);
	}

private:
	// One tcp_retrans line for the namespace whose net/ directory is net_dir.
	// A process that exited between the scan and the read costs its line, silently:
	// that is a race, not a broken host.
	static void emit(Ctx &c, const std::string &net_dir, std::optional<uint64_t> netns, bool own)
	{
		std::string snmp_path = net_dir + "/snmp", netstat_path = net_dir + "/netstat";
		std::string snmp_text, netstat_text;
		bool snmp_ok, netstat_ok;
		if (own) {
			snmp_ok = read_or_warn(c, snmp_path, snmp_text);
			netstat_ok = read_or_warn(c, netstat_path, netstat_text);
		} else {
			snmp_ok = read_file(snmp_path, snmp_text) == 0;
			netstat_ok = read_file(netstat_path, netstat_text) == 0;
			if (!snmp_ok)
				return;
		}
		I64Map tcp = parse_snmp_section(snmp_text, "Tcp");
		I64Map ext = parse_snmp_section(netstat_text, "TcpExt");

		std::array<std::optional<uint64_t>, kN> cur;
		for (size_t i = 0; i < kN; i++) {
			bool is_tcp = kKeys[i].section[3] == '\0';
			if (!(is_tcp ? snmp_ok : netstat_ok))
				continue;
			const I64Map &m = is_tcp ? tcp : ext;
			auto it = m.find(kKeys[i].name);
			if (it == m.end()) {
				if (own)
					c.warn.warn(is_tcp ? snmp_path : netstat_path, kKeys[i].name,
						    std::string("field ") + kKeys[i].section + " " + kKeys[i].name +
							    " missing");
			} else if (it->second >= 0) { // all of these are unsigned counters
				cur[i] = (uint64_t)it->second;
			}
		}
		Event e("tcp_retrans", c.ts_ns);
		for (size_t i = 0; i < kN; i++)
			e.u64(kKeys[i].field, cur[i]);
		e.u64("netns", netns);
		e.str("interfaces", interfaces_of(net_dir));
		c.out.push_back(std::move(e));
	}
};

const RegisterSource kRegister("tcp_retrans", make_source<TcpRetransSource>);

} // namespace

} // namespace ks
