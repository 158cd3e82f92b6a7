// SPDX-License-Identifier: MIT
// cgroup <- SYS/fs/cgroup: one line per selected cgroup (memory, its limit and
// events, swap, memory pressure, CPU usage and throttling, I/O).
//
// Which hierarchy:
//  * v2 (SYS/fs/cgroup/cgroup.controllers exists): walk it; memory.*, cpu.stat,
//    io.stat, memory.pressure of each cgroup.
//  * v1 (SYS/fs/cgroup/memory): walk the memory controller's hierarchy; the
//    same relative path in the cpuacct, cpu and blkio hierarchies (cpu,cpuacct
//    when mounted together) gives CPU and I/O, and in the v2 hierarchy of a
//    hybrid set-up (SYS/fs/cgroup/unified) the memory pressure and the v2 id.
//  * v1 without a memory controller but with SYS/fs/cgroup/unified: that one.
//
// Bounded: at most kMaxWalk directories are looked at and Options::cgroups_max
// lines written per read: first every cgroup at >= 80 % of its effective limit
// (the tightest of its own and its ancestors', root excluded), closest first,
// then the rest by CPU time used since the previous read, then by memory.
#include "sources.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ks {

static std::string_view trim(std::string_view s)
{
	while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t'))
		s.remove_suffix(1);
	while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
		s.remove_prefix(1);
	return s;
}

std::optional<uint64_t> parse_cgroup_number(std::string_view text)
{
	uint64_t v;
	if (to_u64(trim(text), v))
		return v;
	return std::nullopt;
}

CgroupLimit parse_cgroup_limit(std::string_view text)
{
	CgroupLimit l;
	std::string_view t = trim(text);
	uint64_t v;
	if (t == "max") {
		l.valid = l.unlimited = true;
	} else if (to_u64(t, v)) {
		l.valid = true;
		l.unlimited = v >= kCgroupUnlimited;
		l.bytes = l.unlimited ? 0 : v;
	}
	return l;
}

CgroupIo parse_io_stat(std::string_view text)
{
	CgroupIo io;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		if (w.size() < 2 || w[0].find(':') == std::string_view::npos)
			continue;
		bool any = false;
		for (size_t i = 1; i < w.size(); i++) {
			size_t eq = w[i].find('=');
			uint64_t v;
			if (eq == std::string_view::npos || !to_u64(w[i].substr(eq + 1), v))
				continue;
			auto k = w[i].substr(0, eq);
			uint64_t *dst = k == "rbytes" ? &io.rbytes
				      : k == "wbytes" ? &io.wbytes
				      : k == "rios"   ? &io.rios
				      : k == "wios"   ? &io.wios
						      : nullptr;
			if (dst) {
				*dst += v;
				any = true;
			}
		}
		io.devices += any;
	}
	return io;
}

BlkioPair parse_blkio_throttle(std::string_view text)
{
	BlkioPair p;
	std::string_view last_dev;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		uint64_t v;
		if (w.size() != 3 || w[0].find(':') == std::string_view::npos || !to_u64(w[2], v))
			continue;
		if (w[1] == "Read")
			p.read += v;
		else if (w[1] == "Write")
			p.write += v;
		else
			continue;
		if (w[0] != last_dev) {
			p.devices++;
			last_dev = w[0];
		}
	}
	return p;
}

static bool ends_with(std::string_view s, std::string_view suf)
{
	return s.size() >= suf.size() && s.substr(s.size() - suf.size()) == suf;
}

static bool is_hex64(std::string_view s)
{
	if (s.size() != 64)
		return false;
	for (char ch : s)
		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
			return false;
	return true;
}

CgroupName parse_cgroup_name(std::string_view path)
{
	static const std::string_view kPrefixes[] = {"docker-", "cri-containerd-", "crio-", "libpod-"};
	CgroupName n;
	while (!path.empty()) {
		size_t slash = path.find('/');
		std::string_view comp = path.substr(0, slash);
		path.remove_prefix(slash == std::string_view::npos ? path.size() : slash + 1);
		if (comp.empty())
			continue;
		if (ends_with(comp, ".service") || ends_with(comp, ".scope") || ends_with(comp, ".slice"))
			n.unit = std::string(comp);
		std::string_view id = comp;
		if (ends_with(id, ".scope"))
			id.remove_suffix(6);
		for (auto p : kPrefixes)
			if (id.substr(0, p.size()) == p) {
				id.remove_prefix(p.size());
				break;
			}
		if (is_hex64(id))
			n.container_id = std::string(id);
	}
	return n;
}

static size_t json_width(unsigned char c)
{
	if (c == '"' || c == '\\' || c == '\n' || c == '\t')
		return 2;
	return (c < 0x20 || c >= 0x7f) ? 6 : 1;
}

std::string cut_for_json(std::string_view s, size_t max_json)
{
	size_t w = 0;
	for (unsigned char c : s)
		w += json_width(c);
	if (w <= max_json)
		return std::string(s);
	// Keep the tail (the leaf names the unit or container) behind "...".
	size_t budget = max_json > 3 ? max_json - 3 : 0, start = s.size();
	w = 0;
	while (start > 0 && w + json_width((unsigned char)s[start - 1]) <= budget)
		w += json_width((unsigned char)s[--start]);
	return "..." + std::string(s.substr(start));
}

namespace {

// Escaped JSON characters allowed for the path and the unit: with ~1000 for the
// other fields the line stays well under KS_LINE_MAX whatever the names hold.
constexpr size_t kPathJsonMax = 1800;
constexpr size_t kUnitJsonMax = 400;
// Directories looked at per read (a host with more cgroups is cut, with a warning).
constexpr size_t kMaxWalk = 4096;
constexpr unsigned kPressuredPct = 80;

bool is_dir(const std::string &p)
{
	struct stat st;
	return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string &p)
{
	struct stat st;
	return stat(p.c_str(), &st) == 0;
}

std::optional<uint64_t> inode_of(const std::string &p)
{
	struct stat st;
	if (stat(p.c_str(), &st) != 0)
		return std::nullopt;
	return (uint64_t)st.st_ino;
}

// Contents of dir/file, or nullopt (absent files are normal: not every
// controller is everywhere).  dfd: dir opened (files read with openat), or -1.
std::optional<std::string> slurp_in(int dfd, const std::string &dir, const char *file)
{
	std::string text;
	if (dir.empty() || read_file_at(dfd, dir, file, text) != 0)
		return std::nullopt;
	return text;
}

std::optional<std::string> slurp_opt(const std::string &dir, const char *file) { return slurp_in(-1, dir, file); }

std::optional<uint64_t> number_in(int dfd, const std::string &dir, const char *file)
{
	auto t = slurp_in(dfd, dir, file);
	return t ? parse_cgroup_number(*t) : std::nullopt;
}

std::optional<uint64_t> number_at(const std::string &dir, const char *file) { return number_in(-1, dir, file); }

// The values of keys[0..n) in a "key value" file, as key_of(parse_vmstat(text), key)
// gives them (the first line of each), without building the map.
template <size_t N> void keys_of(std::string_view text, const char *const (&keys)[N], std::optional<uint64_t> (&out)[N])
{
	for (auto &o : out)
		o.reset();
	size_t found = 0;
	while (!text.empty() && found < N) {
		size_t nl = text.find('\n');
		std::string_view line = text.substr(0, nl), key;
		text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
		uint64_t v;
		if (!vmstat_line(line, key, v))
			continue;
		for (size_t i = 0; i < N; i++)
			if (!out[i] && key == keys[i]) {
				out[i] = v;
				found++;
			}
	}
}

// A cgroup directory opened for the reads in it; fd -1 when it cannot be (the
// reads then go by path, as they would without it).
struct DirFd {
	explicit DirFd(const std::string &dir) : fd(dir.empty() ? -1 : open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {}
	~DirFd()
	{
		if (fd >= 0)
			close(fd);
	}
	DirFd(const DirFd &) = delete;
	DirFd &operator=(const DirFd &) = delete;
	int fd;
};

struct Layout {
	int version = 0;   // 0: none found
	std::string walk;  // the hierarchy walked (v2 root, or v1 memory)
	std::string cpuacct, cpu, blkio, unified; // v1 companions ("" if absent)
};

Layout find_layout(const std::string &sys_root)
{
	Layout l;
	std::string base = sys_root + "/fs/cgroup";
	if (exists(base + "/cgroup.controllers")) {
		l.version = 2;
		l.walk = base;
		return l;
	}
	if (exists(base + "/unified/cgroup.controllers"))
		l.unified = base + "/unified";
	if (exists(base + "/memory/memory.usage_in_bytes")) {
		l.version = 1;
		l.walk = base + "/memory";
		for (const char *d : {"cpuacct", "cpu,cpuacct", "cpuacct,cpu"})
			if (exists(base + "/" + d + "/cpuacct.usage")) {
				l.cpuacct = base + "/" + d;
				break;
			}
		for (const char *d : {"cpu", "cpu,cpuacct", "cpuacct,cpu"})
			if (exists(base + "/" + d + "/cpu.stat")) {
				l.cpu = base + "/" + d;
				break;
			}
		if (exists(base + "/blkio/blkio.throttle.io_service_bytes_recursive"))
			l.blkio = base + "/blkio";
		return l;
	}
	if (!l.unified.empty()) { // v1 controllers elsewhere, none for memory
		l.version = 2;
		l.walk = l.unified;
		l.unified.clear();
	}
	return l;
}

// What the walk reads of every cgroup, enough to choose.
struct Cand {
	std::string rel;  // "/" or "/a/b"
	uint64_t ino = 0;
	std::optional<uint64_t> usage, cpu_usec;
	CgroupLimit limit;
	std::optional<uint64_t> eff_limit; // tightest limit of it and its ancestors
	std::optional<uint64_t> cpu_delta;
	// v2: the rest of the cpu.stat read for cpu_usec (emit does not read it again).
	std::optional<uint64_t> nr_periods, nr_throttled, throttled_usec;
};

std::string join(const std::string &root, const std::string &rel)
{
	if (root.empty())
		return root;
	return rel == "/" ? root : root + rel;
}

class CgroupSource : public Source {
public:
	void collect(Ctx &c) override
	{
		Layout l = find_layout(c.sys_root);
		if (l.version == 0) {
			c.warn.warn(c.sys_root + "/fs/cgroup", "",
				    "no cgroup hierarchy found (neither cgroup2 nor a v1 memory controller)");
			return;
		}
		std::vector<Cand> all = walk(c, l);
		std::unordered_map<uint64_t, uint64_t> cpu_now;
		for (Cand &k : all)
			if (k.cpu_usec) {
				cpu_now[k.ino] = *k.cpu_usec;
				auto it = prev_cpu_.find(k.ino);
				if (it != prev_cpu_.end())
					k.cpu_delta = counter_delta(it->second, k.cpu_usec);
			}
		prev_cpu_ = std::move(cpu_now);

		auto pct = [](const Cand &k) {
			return (k.usage && k.eff_limit && *k.eff_limit > 0) ? (double)*k.usage / (double)*k.eff_limit
									   : -1.0;
		};
		auto pressured = [](const Cand &k) {
			return k.usage && k.eff_limit && *k.usage * 100.0 >= (double)kPressuredPct * (double)*k.eff_limit;
		};
		std::stable_sort(all.begin(), all.end(), [&](const Cand &a, const Cand &b) {
			bool pa = pressured(a), pb = pressured(b);
			if (pa != pb)
				return pa;
			if (pa)
				return pct(a) > pct(b);
			uint64_t da = a.cpu_delta.value_or(0), db = b.cpu_delta.value_or(0);
			if (da != db)
				return da > db;
			return a.usage.value_or(0) > b.usage.value_or(0);
		});
		if (all.size() > c.opt.cgroups_max)
			all.resize(c.opt.cgroups_max);
		for (const Cand &k : all)
			emit(c, l, k);
	}

private:
	std::unordered_map<uint64_t, uint64_t> prev_cpu_; // cgroup id -> cpu usage (us) at the last read

	static void measure(const Layout &l, int dfd, const std::string &dir, Cand &k)
	{
		if (l.version == 2) {
			k.usage = number_in(dfd, dir, "memory.current");
			if (auto t = slurp_in(dfd, dir, "memory.max"))
				k.limit = parse_cgroup_limit(*t);
			if (auto t = slurp_in(dfd, dir, "cpu.stat")) {
				static const char *const kKeys[] = {"usage_usec", "nr_periods", "nr_throttled", "throttled_usec"};
				std::optional<uint64_t> v[4];
				keys_of(*t, kKeys, v);
				k.cpu_usec = v[0];
				k.nr_periods = v[1];
				k.nr_throttled = v[2];
				k.throttled_usec = v[3];
			}
		} else {
			k.usage = number_in(dfd, dir, "memory.usage_in_bytes");
			if (auto t = slurp_in(dfd, dir, "memory.limit_in_bytes"))
				k.limit = parse_cgroup_limit(*t);
			if (auto ns = number_at(join(l.cpuacct, k.rel), "cpuacct.usage"))
				k.cpu_usec = *ns / 1000;
		}
	}

	std::vector<Cand> walk(Ctx &c, const Layout &l)
	{
		std::vector<Cand> out;
		std::vector<std::string> kids;
		// Depth first, each entry (relative path, its parent's effective limit).
		std::vector<std::pair<std::string, std::optional<uint64_t>>> todo = {{"/", std::nullopt}};
		while (!todo.empty()) {
			if (out.size() >= kMaxWalk) {
				c.warn.warn(l.walk, "walk", "more than 4096 cgroups: the rest not read");
				break;
			}
			auto [rel, parent_limit] = std::move(todo.back());
			todo.pop_back();
			std::string dir = join(l.walk, rel);
			// The directory opened once: its inode, its files (openat) and its
			// entries from the one descriptor.  A directory that cannot be
			// opened (but may be stat()ed) goes by path.
			DirFd d(dir);
			const int open_err = d.fd < 0 ? errno : 0;
			std::optional<uint64_t> ino;
			struct stat st;
			if (d.fd >= 0 && fstat(d.fd, &st) == 0)
				ino = (uint64_t)st.st_ino;
			else if (open_err != ENOENT)
				ino = inode_of(dir);
			if (!ino)
				continue; // removed since the parent was listed
			Cand k;
			k.rel = rel;
			k.ino = *ino;
			measure(l, d.fd, dir, k);
			k.eff_limit = parent_limit;
			if (rel != "/" && k.limit.valid && !k.limit.unlimited &&
			    (!k.eff_limit || k.limit.bytes < *k.eff_limit))
				k.eff_limit = k.limit.bytes;
			kids.clear();
			auto add = [&](const char *name, unsigned char type) {
				if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
					return;
				if (type == DT_DIR || (type == DT_UNKNOWN && is_dir(dir + "/" + name)))
					kids.emplace_back(name);
			};
			bool listed = false;
			if (d.fd >= 0) {
				for_each_dirent(d.fd, add);
				listed = true;
			} else if (DIR *dd = opendir(dir.c_str())) {
				while (struct dirent *de = readdir(dd))
					add(de->d_name, de->d_type);
				closedir(dd);
				listed = true;
			}
			if (listed) {
				// Reverse name order onto the stack: visited in name order.
				std::sort(kids.rbegin(), kids.rend());
				for (auto &n : kids)
					todo.emplace_back(rel == "/" ? "/" + n : rel + "/" + n, k.eff_limit);
			}
			out.push_back(std::move(k));
		}
		return out;
	}

	static void emit(Ctx &c, const Layout &l, const Cand &k)
	{
		const bool v2 = l.version == 2;
		std::string dir = join(l.walk, k.rel);
		// The cgroup's own files are read through one descriptor of its directory.
		DirFd d(dir);
		// The v2 twin: the cgroup itself on v2, the same path under unified on a hybrid host.
		std::string twin = v2 ? dir : (l.unified.empty() ? "" : join(l.unified, k.rel));
		std::optional<uint64_t> twin_id;
		struct stat st;
		if (v2 && d.fd >= 0 && fstat(d.fd, &st) == 0)
			twin_id = (uint64_t)st.st_ino;
		else if (!twin.empty())
			twin_id = inode_of(twin);
		if (!twin_id)
			twin.clear();
		const int twin_fd = v2 ? d.fd : -1;

		Event e("cgroup", c.ts_ns);
		e.str("path", cut_for_json(k.rel, kPathJsonMax));
		e.u64("version", (uint64_t)l.version);
		e.u64("cgroup_id", k.ino);
		e.u64("cgroup2_id", twin_id);
		CgroupName n = parse_cgroup_name(k.rel);
		if (n.unit.empty())
			e.u64("unit", std::nullopt);
		else
			e.str("unit", cut_for_json(n.unit, kUnitJsonMax));
		if (n.container_id.empty())
			e.u64("container_id", std::nullopt);
		else
			e.str("container_id", n.container_id);

		// Memory.
		e.u64("memory_bytes", k.usage);
		e.u64("memory_limit_bytes", k.limit.valid && !k.limit.unlimited && k.rel != "/"
						    ? std::optional<uint64_t>(k.limit.bytes)
						    : std::nullopt);
		e.u64("memory_limit_effective_bytes", k.eff_limit);
		std::optional<uint64_t> swap;
		if (v2) {
			swap = number_in(d.fd, dir, "memory.swap.current");
		} else if (auto memsw = number_in(d.fd, dir, "memory.memsw.usage_in_bytes"); memsw && k.usage) {
			swap = *memsw > *k.usage ? *memsw - *k.usage : 0;
		}
		e.u64("swap_bytes", swap);
		static const char *const kEvKeys[] = {"low", "high", "max", "oom", "oom_kill"};
		static const char *const kOomKeys[] = {"oom_kill", "under_oom"};
		std::optional<uint64_t> ev[5], oomc[2];
		if (v2) {
			if (auto t = slurp_in(d.fd, dir, "memory.events"))
				keys_of(*t, kEvKeys, ev);
		} else if (auto t = slurp_in(d.fd, dir, "memory.oom_control")) {
			keys_of(*t, kOomKeys, oomc);
		}
		e.u64("events_low_total", ev[0]);
		e.u64("events_high_total", ev[1]);
		e.u64("events_max_total", ev[2]);
		e.u64("events_oom_total", ev[3]);
		e.u64("oom_kill_total", v2 ? ev[4] : oomc[0]);
		e.u64("failcnt_total", v2 ? std::nullopt : number_in(d.fd, dir, "memory.failcnt"));
		e.u64("under_oom", oomc[1]);

		// Memory pressure (PSI exists per cgroup on v2 only).
		Psi psi;
		if (auto t = slurp_in(twin_fd, twin, "memory.pressure"))
			psi = parse_psi(*t);
		auto avg10 = [](const std::optional<PsiLine> &p) {
			return p ? std::optional<double>(p->avg10) : std::nullopt;
		};
		auto total = [](const std::optional<PsiLine> &p) {
			return p ? std::optional<uint64_t>(p->total_us) : std::nullopt;
		};
		e.f64("mem_pressure_some_avg10", avg10(psi.some));
		e.f64("mem_pressure_full_avg10", avg10(psi.full));
		e.u64("mem_pressure_some_total_us", total(psi.some));
		e.u64("mem_pressure_full_total_us", total(psi.full));

		// CPU: on v2 what the walk read of cpu.stat; on v1 the cpu hierarchy's.
		std::optional<uint64_t> periods, throttled, thr;
		if (v2) {
			periods = k.nr_periods;
			throttled = k.nr_throttled;
			thr = k.throttled_usec;
		} else if (auto t = slurp_opt(join(l.cpu, k.rel), "cpu.stat")) {
			static const char *const kCpuKeys[] = {"nr_periods", "nr_throttled", "throttled_usec",
							       "throttled_time"};
			std::optional<uint64_t> cv[4];
			keys_of(*t, kCpuKeys, cv);
			periods = cv[0];
			throttled = cv[1];
			thr = cv[2];
			if (cv[3])
				thr = *cv[3] / 1000;
		}
		e.u64("cpu_usage_usec_total", k.cpu_usec);
		e.u64("cpu_nr_periods_total", periods);
		e.u64("cpu_nr_throttled_total", throttled);
		e.u64("cpu_throttled_usec_total", thr);

		// I/O.
		std::optional<uint64_t> rb, wb, ri, wi;
		if (v2) {
			if (auto t = slurp_in(d.fd, dir, "io.stat")) {
				CgroupIo io = parse_io_stat(*t);
				rb = io.rbytes, wb = io.wbytes, ri = io.rios, wi = io.wios;
			}
		} else {
			// blk-throttle counts only bios that pass through it: without a
			// device row ("Total 0" alone) the I/O is unknown, not zero.
			std::string bd = join(l.blkio, k.rel);
			if (auto t = slurp_opt(bd, "blkio.throttle.io_service_bytes_recursive")) {
				BlkioPair p = parse_blkio_throttle(*t);
				if (p.devices)
					rb = p.read, wb = p.write;
			}
			if (auto t = slurp_opt(bd, "blkio.throttle.io_serviced_recursive")) {
				BlkioPair p = parse_blkio_throttle(*t);
				if (p.devices)
					ri = p.read, wi = p.write;
			}
		}
		e.u64("io_rbytes_total", rb);
		e.u64("io_wbytes_total", wb);
		e.u64("io_rios_total", ri);
		e.u64("io_wios_total", wi);
		c.out.push_back(std::move(e));
	}
};

const RegisterSource kRegister("cgroup", make_source<CgroupSource>);

} // namespace

} // namespace ks
