// SPDX-License-Identifier: MIT
// limits <- the host's countable resources against their limits, one line per
// read (gauges only, no state):
//  * file handles: PROC/sys/fs/file-nr against file-max (and nr_open);
//  * the process closest to its own RLIMIT_NOFILE: a bounded scan of
//    PROC/PID/fd (its size, or its entries counted) and PROC/PID/limits (at most kMaxPids
//    processes; limits read only for one holding >= kFdsWorthReading);
//  * tasks (PROC/loadavg's thread count) against pid_max and threads-max;
//  * the pids cgroup closest to its pids.max (v1 SYS/fs/cgroup/pids, else a
//    v2 hierarchy with the pids controller; at most kMaxWalk cgroups);
//  * conntrack entries against nf_conntrack_max (null while the module is not
//    loaded: that is no error, so no warning either);
//  * ports of the ephemeral range (ip_local_port_range) held by TCP sockets.
#include "sources.h"

#include <algorithm>
#include <cstring>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ks {

// Open descriptors of one process from its PROC/PID/fd directory.  On procfs since Linux 6.2 the
// directory's st_size is that count: one stat instead of a getdents walk per process, which was
// about a third of the scraper's idle CPU (perf, 2-CPU VM).  A process without a file table (a
// kernel thread: most processes of a small host) has size 0 there, which is its count, as a walk
// of its empty directory finds: zero_is_count (this kernel counts: PROC/self/fd, never empty, has
// a size) takes it as it is instead of walking it (open, fstat, getdents, close: another third).
// Older kernels give 0 for every process, and a recorded fixture's directory is no procfs: both
// are counted entry by entry.
static bool count_open_fds(const char *fd_dir, bool size_is_count, bool zero_is_count, uint64_t &n)
{
	if (size_is_count) {
		struct stat st;
		if (stat(fd_dir, &st) != 0)
			return false;
		if (st.st_size > 0 || zero_is_count) {
			n = (uint64_t)st.st_size;
			return true;
		}
	}
	DIR *fd = opendir(fd_dir);
	if (!fd)
		return false;
	n = 0;
	while (struct dirent *fe = readdir(fd))
		n += fe->d_name[0] != '.';
	closedir(fd);
	return true;
}

NofileLimit parse_limits_nofile(std::string_view text)
{
	NofileLimit l;
	for (auto line : split_lines(text)) {
		if (line.substr(0, 14) != "Max open files")
			continue;
		auto w = split_ws(line.substr(14));
		if (w.size() < 2)
			break;
		l.found = true;
		uint64_t v;
		if (to_u64(w[0], v))
			l.soft = v;
		if (to_u64(w[1], v))
			l.hard = v;
		break;
	}
	return l;
}

static int hexval(char ch)
{
	return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

uint64_t count_ephemeral_ports(std::string_view text, uint64_t lo, uint64_t hi, std::vector<bool> &seen)
{
	if (seen.size() < 65536)
		seen.resize(65536);
	uint64_t n = 0;
	bool header = true;
	for (auto line : split_lines(text)) {
		if (header) {
			header = false;
			continue;
		}
		auto w = split_ws(line);
		if (w.size() < 4 || w[3] == "0A") // LISTEN holds its port, but not an ephemeral one
			continue;
		size_t colon = w[1].rfind(':');
		if (colon == std::string_view::npos || w[1].size() - colon - 1 != 4)
			continue;
		uint64_t port = 0;
		bool ok = true;
		for (char ch : w[1].substr(colon + 1)) {
			int d = hexval(ch);
			ok = ok && d >= 0;
			port = port * 16 + (uint64_t)(d < 0 ? 0 : d);
		}
		if (ok && port >= lo && port <= hi && port < 65536 && !seen[port]) {
			seen[port] = true;
			n++;
		}
	}
	return n;
}

namespace {

constexpr size_t kMaxPids = 8192;
constexpr size_t kMaxWalk = 4096;
constexpr size_t kPathJsonMax = 1000;

std::optional<uint64_t> first_number(const std::string &path)
{
	std::string t;
	if (read_file(path, t) != 0)
		return std::nullopt;
	auto n = parse_numbers(t);
	return n.empty() ? std::nullopt : std::optional<uint64_t>(n[0]);
}

bool is_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

bool exists(const std::string &p)
{
	struct stat st;
	return stat(p.c_str(), &st) == 0;
}

struct PidsCg {
	std::string rel;
	uint64_t current = 0, max = 0;
	uint64_t limited = 0; // cgroups with a pids.max
	bool found = false;
};

// The cgroup nearest its pids.max (current / max highest), by a bounded walk.
PidsCg tightest_pids_cgroup(const std::string &root)
{
	PidsCg best;
	std::vector<std::string> todo = {"/"};
	size_t seen = 0;
	while (!todo.empty() && seen++ < kMaxWalk) {
		std::string rel = std::move(todo.back());
		todo.pop_back();
		std::string dir = rel == "/" ? root : root + rel;
		std::string t;
		if (rel != "/" && read_file(dir + "/pids.max", t) == 0) {
			uint64_t mx, cur;
			auto w = split_ws(t);
			std::string ct;
			if (!w.empty() && to_u64(w[0], mx) && mx > 0 && read_file(dir + "/pids.current", ct) == 0) {
				auto cw = split_ws(ct);
				if (!cw.empty() && to_u64(cw[0], cur)) {
					best.limited++;
					if (!best.found || (double)cur / (double)mx > (double)best.current / (double)best.max) {
						best.found = true;
						best.rel = rel;
						best.current = cur;
						best.max = mx;
					}
				}
			}
		}
		int d = open(dir.c_str(), O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC);
		if (d < 0)
			continue;
		for_each_dirent(d, [&](const char *name, unsigned char type) {
			if (name[0] == '.')
				return;
			if (type == DT_DIR)
				todo.push_back(rel == "/" ? "/" + std::string(name) : rel + "/" + name);
		});
		close(d);
	}
	return best;
}

std::string pids_hierarchy(const std::string &sys_root)
{
	std::string base = sys_root + "/fs/cgroup";
	if (exists(base + "/pids/pids.current") || exists(base + "/pids/tasks"))
		return base + "/pids";
	for (const std::string &v2 : {base, base + "/unified"}) {
		std::string t;
		if (read_file(v2 + "/cgroup.controllers", t) == 0)
			for (auto w : split_ws(t))
				if (w == "pids")
					return v2;
	}
	return "";
}

class LimitsSource : public Source {
public:
	void collect(Ctx &c) override
	{
		const std::string &P = c.proc_root;
		Event e("limits", c.ts_ns);
		std::string t;
		std::vector<uint64_t> fnr;
		if (read_or_warn(c, P + "/sys/fs/file-nr", t))
			fnr = parse_numbers(t);
		e.u64("file_handles", fnr.size() == 3 ? std::optional<uint64_t>(fnr[0] - std::min(fnr[0], fnr[1]))
						     : std::nullopt);
		e.u64("file_max", fnr.size() == 3 ? std::optional<uint64_t>(fnr[2]) : std::nullopt);
		e.u64("nr_open", first_number(P + "/sys/fs/nr_open"));

		// The process nearest its own descriptor limit.
		uint64_t procs = 0, best_fds = 0, best_lim = 0, best_pid = 0;
		double best_ratio = -1;
		if (const std::vector<std::string> *pids = c.procs.get(P)) {
			const bool fd_count_in_size = c.procs.is_procfs();
			// Whether this kernel counts in st_size: asked once per proc root.
			if (fd_count_in_size && zero_root_ != P) {
				struct stat self_fd;
				zero_is_count_ = stat((P + "/self/fd").c_str(), &self_fd) == 0 && self_fd.st_size > 0;
				zero_root_ = P;
			}
			const bool zero_is_count = fd_count_in_size && zero_is_count_;
			std::string pd;
			for (const std::string &name : *pids) {
				if (!is_digits(name.c_str()))
					continue;
				if (procs++ >= kMaxPids)
					continue; // still counted
				pd.assign(P).append("/").append(name);
				const size_t base = pd.size();
				uint64_t n = 0;
				if (!count_open_fds(pd.append("/fd").c_str(), fd_count_in_size, zero_is_count, n))
					continue; // gone, or a kernel thread we cannot read
				if (n < kFdsWorthReading)
					continue;
				pd.resize(base);
				if (read_file(pd.append("/limits"), lt_) != 0)
					continue;
				NofileLimit l = parse_limits_nofile(lt_);
				if (!l.soft || *l.soft == 0)
					continue;
				double r = (double)n / (double)*l.soft;
				if (r > best_ratio) {
					best_ratio = r;
					best_fds = n;
					best_lim = *l.soft;
					best_pid = strtoull(name.c_str(), nullptr, 10);
				}
			}
		}
		bool have = best_ratio >= 0;
		std::string comm;
		if (have && read_file(P + "/" + std::to_string(best_pid) + "/comm", comm) == 0)
			while (!comm.empty() && comm.back() == '\n')
				comm.pop_back();
		e.u64("processes", procs);
		e.u64("nofile_top_pid", have ? std::optional<uint64_t>(best_pid) : std::nullopt);
		if (have)
			e.str("nofile_top_comm", cut_for_json(comm, 64));
		else
			e.u64("nofile_top_comm", std::nullopt);
		e.u64("nofile_top_fds", have ? std::optional<uint64_t>(best_fds) : std::nullopt);
		e.u64("nofile_top_limit", have ? std::optional<uint64_t>(best_lim) : std::nullopt);

		// Tasks (threads) against pid_max and threads-max.
		std::optional<uint64_t> tasks;
		if (read_kept_or_warn(c, P + "/loadavg", t))
			if (auto l = parse_loadavg(t))
				tasks = l->total;
		e.u64("tasks", tasks);
		e.u64("pid_max", first_number(P + "/sys/kernel/pid_max"));
		e.u64("threads_max", first_number(P + "/sys/kernel/threads-max"));

		// The pids cgroup nearest its limit.
		std::string h = pids_hierarchy(c.sys_root);
		PidsCg pc = h.empty() ? PidsCg{} : tightest_pids_cgroup(h);
		if (pc.found)
			e.str("pids_cgroup_path", cut_for_json(pc.rel, kPathJsonMax));
		else
			e.u64("pids_cgroup_path", std::nullopt);
		e.u64("pids_cgroup_current", pc.found ? std::optional<uint64_t>(pc.current) : std::nullopt);
		e.u64("pids_cgroup_max", pc.found ? std::optional<uint64_t>(pc.max) : std::nullopt);
		e.u64("pids_cgroups_limited", h.empty() ? std::nullopt : std::optional<uint64_t>(pc.limited));

		// conntrack, where the module is loaded.
		e.u64("conntrack_entries", first_number(P + "/sys/net/netfilter/nf_conntrack_count"));
		e.u64("conntrack_max", first_number(P + "/sys/net/netfilter/nf_conntrack_max"));

		// Ephemeral ports.
		std::optional<uint64_t> lo, hi, used;
		if (read_or_warn(c, P + "/sys/net/ipv4/ip_local_port_range", t)) {
			auto r = parse_numbers(t);
			if (r.size() == 2 && r[0] <= r[1]) {
				lo = r[0];
				hi = r[1];
				uint64_t n = 0;
				bool any = false;
				if (const TcpDiag::Counts *live = c.tcp.get(c)) {
					// The tcp source's dump (sock_diag): local ports of the
					// sockets not listening.
					for (uint16_t p : live->port_list)
						n += p >= *lo && p <= *hi;
					any = true;
				} else {
					std::vector<bool> seen;
					for (const char *f : {"/net/tcp", "/net/tcp6"})
						if (read_file(P + f, t) == 0) {
							n += count_ephemeral_ports(t, *lo, *hi, seen);
							any = true;
						}
				}
				if (any)
					used = n;
			}
		}
		e.u64("port_range_low", lo);
		e.u64("port_range_high", hi);
		e.u64("ephemeral_ports_used", used);
		c.out.push_back(std::move(e));
	}

private:
	std::string lt_; // reused: no allocation per read once grown
	std::string zero_root_; // the proc root zero_is_count_ was found for
	bool zero_is_count_ = false;
};

const RegisterSource kRegister("limits", make_source<LimitsSource>);

} // namespace

} // namespace ks
