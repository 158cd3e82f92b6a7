// SPDX-License-Identifier: MIT
// tcp_retrans <- /proc/net/snmp (Tcp:) + /proc/net/netstat (TcpExt:).
#include "sources.h"

#include <algorithm>
#include <optional>
#include <unordered_map>
#include <cerrno>
#include <cstring>

#include <sys/stat.h>
#include <unistd.h>

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

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

void snmp_section_values(std::string_view text, std::string_view prefix, const char *const *want, size_t n,
			 std::optional<int64_t> *out)
{
	// parse_snmp_section's walk, keeping only the wanted names (the first
	// value of each, as its map's emplace does).
	for (size_t j = 0; j < n; j++)
		out[j].reset();
	std::vector<std::string_view> names;
	while (!text.empty()) {
		size_t nl = text.find('\n');
		std::string_view line = text.substr(0, nl);
		text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
		// Only a line whose first word is "Prefix:" is split.
		size_t i = 0;
		while (i < line.size() && is_space(line[i]))
			i++;
		std::string_view rest = line.substr(i);
		if (rest.size() < prefix.size() + 1 || rest.substr(0, prefix.size()) != prefix ||
		    rest[prefix.size()] != ':' || (rest.size() > prefix.size() + 1 && !is_space(rest[prefix.size() + 1])))
			continue;
		auto w = split_ws(rest);
		if (names.empty()) {
			names.assign(w.begin() + 1, w.end());
			continue;
		}
		for (size_t k = 1; k < w.size() && k - 1 < names.size(); k++) {
			for (size_t j = 0; j < n; j++) {
				if (out[j] || names[k - 1] != want[j])
					continue;
				int64_t v;
				uint64_t u;
				if (to_i64(w[k], v))
					out[j] = v;
				else if (to_u64(w[k], u)) // above INT64_MAX: keep the low bits honest
					out[j] = (int64_t)(u & INT64_MAX);
			}
		}
		names.clear();
	}
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
// Each process's namespace is read again (readlink of /proc/PID/ns/net) every this many
// intervals, and for a pid not seen before at once: a process changes namespace only by
// setns/unshare, nearly always before it execs, and reading every pid every second was ~100
// readlinks a second on an idle VM.
constexpr unsigned kNetnsRereadEvery = 10;
constexpr size_t kMaxInterfacesChars = 200;

// The network namespace's inode.  On procfs from the link's text, "net:[4026531840]" (the
// inode number of the namespace's nsfs inode, which stat() would give by following the link):
// half the cost of a stat, once per process per read.  procfs refuses the readlink exactly when
// it refuses the stat (no such task, ptrace access denied, an exiting task), so a refusal is
// not asked twice: one failed syscall, as before.  Anything else (a recorded tree, a text not
// of that form) is stat()ed as before.
std::optional<uint64_t> ns_inode(const std::string &path, bool procfs)
{
	if (procfs) {
		char buf[64];
		ssize_t n = readlink(path.c_str(), buf, sizeof(buf));
		if (n < 0 && errno != EINVAL)
			return std::nullopt;
		std::string_view t(buf, n > 0 ? (size_t)n : 0);
		uint64_t v;
		if (t.size() > 6 && t.substr(0, 5) == "net:[" && t.back() == ']' &&
		    to_u64(t.substr(5, t.size() - 6), v))
			return v;
	}
	struct stat st;
	if (stat(path.c_str(), &st) != 0)
		return std::nullopt;
	return (uint64_t)st.st_ino;
}

// "veth0,eth0" from that namespace's /proc/PID/net/dev, lo left out (it is in every one).
std::string interfaces_of(Ctx &c, const std::string &net_dir, bool own)
{
	std::string text, out;
	const std::string path = net_dir + "/dev";
	if ((own ? c.files.read(path, text) : read_file(path, text)) != 0)
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
		const std::vector<std::string> *pids = c.procs.get(c.proc_root);
		const bool procfs = pids && c.procs.is_procfs();
		std::optional<uint64_t> own = ns_inode(c.proc_root + "/self/ns/net", procfs);
		emit(c, c.proc_root + "/net", own, true);
		// Other namespaces, through the first process found in each.
		std::vector<uint64_t> seen;
		if (own)
			seen.push_back(*own);
		if (pids == nullptr)
			return;
		std::string pid_dir;
		const bool reread = collects_++ % kNetnsRereadEvery == 0;
		std::unordered_map<std::string, std::optional<uint64_t>> netns_of;
		netns_of.reserve(pids->size());
		for (const std::string &name : *pids) {
			if (name[0] < '1' || name[0] > '9')
				continue;
			// pid 1's ns/net refuses even root here (EACCES, counted by ks-syscall as a
			// storage error every second); init shares the host's namespace anyway.
			if (name == "1")
				continue;
			pid_dir.assign(c.proc_root).append("/").append(name);
			std::optional<uint64_t> ino;
			auto known = reread ? netns_of_.end() : netns_of_.find(name);
			if (known != netns_of_.end())
				ino = known->second;
			else
				ino = ns_inode(pid_dir + "/ns/net", procfs);
			netns_of.emplace(name, ino);
			if (!ino || std::find(seen.begin(), seen.end(), *ino) != seen.end())
				continue;
			seen.push_back(*ino);
			if (seen.size() > kMaxNetns) {
				c.warn.warn(c.proc_root, "ns/net", "more than 64 network namespaces: the rest not read");
				break;
			}
			emit(c, pid_dir + "/net", ino, false);
		}
		netns_of_ = std::move(netns_of); // exited pids fall out
	}

private:
	// One tcp_retrans line for the namespace whose net/ directory is net_dir.
	// A process that exited between the scan and the read costs its line, silently:
	// that is a race, not a broken host.  The scraper's own namespace is read
	// through Ctx::files (kept open).
	void emit(Ctx &c, const std::string &net_dir, std::optional<uint64_t> netns, bool own)
	{
		std::string snmp_path = net_dir + "/snmp", netstat_path = net_dir + "/netstat";
		bool snmp_ok, netstat_ok;
		if (own) {
			snmp_ok = read_kept_or_warn(c, snmp_path, snmp_text_);
			netstat_ok = read_kept_or_warn(c, netstat_path, netstat_text_);
		} else {
			snmp_ok = read_file(snmp_path, snmp_text_) == 0;
			netstat_ok = read_file(netstat_path, netstat_text_) == 0;
			if (!snmp_ok)
				return;
		}
		// The wanted names of each section, in kKeys order.
		const char *tcp_names[kN], *ext_names[kN];
		size_t tcp_at[kN], ext_at[kN], n_tcp = 0, n_ext = 0;
		for (size_t i = 0; i < kN; i++) {
			if (kKeys[i].section[3] == '\0') {
				tcp_at[n_tcp] = i;
				tcp_names[n_tcp++] = kKeys[i].name;
			} else {
				ext_at[n_ext] = i;
				ext_names[n_ext++] = kKeys[i].name;
			}
		}
		std::optional<int64_t> tcp_v[kN], ext_v[kN], val[kN];
		snmp_section_values(snmp_ok ? std::string_view(snmp_text_) : std::string_view(), "Tcp", tcp_names,
				    n_tcp, tcp_v);
		snmp_section_values(netstat_ok ? std::string_view(netstat_text_) : std::string_view(), "TcpExt",
				    ext_names, n_ext, ext_v);
		for (size_t j = 0; j < n_tcp; j++)
			val[tcp_at[j]] = tcp_v[j];
		for (size_t j = 0; j < n_ext; j++)
			val[ext_at[j]] = ext_v[j];

		std::array<std::optional<uint64_t>, kN> cur;
		for (size_t i = 0; i < kN; i++) {
			bool is_tcp = kKeys[i].section[3] == '\0';
			if (!(is_tcp ? snmp_ok : netstat_ok))
				continue;
			if (!val[i]) {
				if (own)
					c.warn.warn(is_tcp ? snmp_path : netstat_path, kKeys[i].name,
						    std::string("field ") + kKeys[i].section + " " + kKeys[i].name +
							    " missing");
			} else if (*val[i] >= 0) { // all of these are unsigned counters
				cur[i] = (uint64_t)*val[i];
			}
		}
		Event e("tcp_retrans", c.ts_ns);
		for (size_t i = 0; i < kN; i++)
			e.u64(kKeys[i].field, cur[i]);
		e.u64("netns", netns);
		e.str("interfaces", interfaces_of(c, net_dir, own));
		c.out.push_back(std::move(e));
	}

	std::string snmp_text_, netstat_text_; // reused: no allocation per read once grown
	std::unordered_map<std::string, std::optional<uint64_t>> netns_of_; // pid -> its namespace, last read
	unsigned collects_ = 0;
};

const RegisterSource kRegister("tcp_retrans", make_source<TcpRetransSource>);

} // namespace

} // namespace ks
