// SPDX-License-Identifier: MIT
//
// Per-process /proc reading for the agent's samplers: see procs.h.
#include "procs.h"

#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <string_view>
#include <unistd.h>
#include <unordered_map>

namespace ks::procs {

namespace {

using sv = std::string_view;

// The whitespace bytes.split() splits on and int() strips (Py_ISSPACE).
bool py_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

// The first max words of text.split() into out; returns how many there were (at most max).
size_t split_words(sv text, sv *out, size_t max)
{
	size_t n = 0, i = 0;
	while (n < max) {
		while (i < text.size() && py_space(text[i]))
			i++;
		if (i == text.size())
			break;
		size_t start = i;
		while (i < text.size() && !py_space(text[i]))
			i++;
		out[n++] = text.substr(start, i - start);
	}
	return n;
}

// A run of ASCII digits that fits in 64 bits: the only numbers parsed here.
bool digits_u64(sv s, uint64_t &v)
{
	if (s.empty())
		return false;
	uint64_t n = 0;
	for (char c : s) {
		if (c < '0' || c > '9')
			return false;
		if (__builtin_mul_overflow(n, 10u, &n) || __builtin_add_overflow(n, (uint64_t)(c - '0'), &n))
			return false;
	}
	v = n;
	return true;
}

// int(s) for s with no newline in it, in the plain case: digits with whitespace around.
bool int_u64(sv s, uint64_t &v)
{
	size_t a = 0, b = s.size();
	while (a < b && py_space(s[a]))
		a++;
	while (b > a && py_space(s[b - 1]))
		b--;
	return digits_u64(s.substr(a, b - a), v);
}

// The name of a /proc entry as a pid or tid: ASCII digits only.
bool name_u64(const char *name, uint64_t &v)
{
	return digits_u64(sv(name), v);
}

// One read() of at most READ_MAX bytes into buf, as slurp() does; false when
// open or read fails (gone, no permission, a directory).
bool slurp(const char *path, char *buf, size_t &len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n;
	do
		n = read(fd, buf, READ_MAX);
	while (n < 0 && errno == EINTR);
	close(fd);
	if (n < 0)
		return false;
	len = (size_t)n;
	return true;
}

enum class Num { Absent, Ok, Odd };

// _status_int(status, key) where text is b"\n" + status and key starts with '\n'.
Num status_int(sv text, sv key, uint64_t &v)
{
	size_t i = text.find(key);
	if (i == sv::npos) {
		v = 0;
		return Num::Absent;
	}
	size_t j = i + key.size();
	size_t end = text.find('\n', j);
	sv value = text.substr(j, end == sv::npos ? sv::npos : end - j);
	return int_u64(value, v) ? Num::Ok : Num::Odd;
}

constexpr sv VOL_KEY = "\nvoluntary_ctxt_switches:";
constexpr sv NONVOL_KEY = "\nnonvoluntary_ctxt_switches:";

// Both switch counts of a status text (with its leading '\n'); false when one is not plain.
bool status_ctxt(sv text, uint64_t &vol, uint64_t &nonvol)
{
	return status_int(text, VOL_KEY, vol) != Num::Odd && status_int(text, NONVOL_KEY, nonvol) != Num::Odd;
}

// parse_proc_sample in the plain case; false means "let Python decide".
bool parse_sample(sv stat, sv status, uint64_t page_kb, ProcFields &f)
{
	size_t lp = stat.find('('), rp = stat.rfind(')');
	if (lp == sv::npos || rp == sv::npos || rp < lp)
		return false;
	// The fields after comm: stat[rp + 2:].split(), the first 22 of them.
	sv rest = rp + 2 <= stat.size() ? stat.substr(rp + 2) : sv();
	sv w[22];
	if (split_words(rest, w, 22) < 22)
		return false;
	for (char c : w[0])
		if ((unsigned char)c >= 0x80)
			return false; // decode("ascii", "replace") would replace it
	uint64_t vol, nonvol, utime, stime, rss;
	if (!status_ctxt(status, vol, nonvol))
		return false;
	if (!digits_u64(w[1], f.ppid) || !digits_u64(w[7], f.minflt) || !digits_u64(w[9], f.majflt) ||
	    !digits_u64(w[11], utime) || !digits_u64(w[12], stime) || !digits_u64(w[17], f.threads) ||
	    !digits_u64(w[19], f.start_ticks) || !digits_u64(w[21], rss))
		return false;
	if (__builtin_mul_overflow(rss, page_kb, &f.rss_kb) || __builtin_add_overflow(utime, stime, &f.cpu_ticks) ||
	    __builtin_add_overflow(vol, nonvol, &f.ctxt))
		return false;
	f.nonvol_ctxt = nonvol;
	f.comm.assign(stat.data() + lp + 1, rp - lp - 1);
	f.state.assign(w[0].data(), w[0].size());
	return true;
}

// parse_proc_io in the plain case: Parsed, None (a key is missing), or Raw.
Got parse_io(sv text, uint64_t &wchar, uint64_t &read_bytes, uint64_t &write_bytes)
{
	if (text.find('\r') != sv::npos)
		return Got::Raw; // bytes.splitlines() splits there too
	bool got_w = false, got_r = false, got_wb = false;
	while (!text.empty()) {
		size_t nl = text.find('\n');
		sv line = text.substr(0, nl);
		text = nl == sv::npos ? sv() : text.substr(nl + 1);
		size_t colon = line.find(':');
		sv key = line.substr(0, colon);
		sv value = colon == sv::npos ? sv() : line.substr(colon + 1);
		uint64_t *dst = nullptr;
		if (key == "wchar")
			dst = &wchar, got_w = true;
		else if (key == "read_bytes")
			dst = &read_bytes, got_r = true;
		else if (key == "write_bytes")
			dst = &write_bytes, got_wb = true;
		if (dst != nullptr && !int_u64(value, *dst))
			return Got::Raw;
	}
	return got_w && got_r && got_wb ? Got::Parsed : Got::None;
}

// A path buffer: root + "/" + parts, rebuilt per file without allocating.
class Path {
public:
	explicit Path(const std::string &root) : s_(root) { s_ += '/'; base_ = s_.size(); }
	// root/a/b/c (empty parts left out).
	const char *at(sv a, sv b = {}, sv c = {}, sv d = {}, sv e = {})
	{
		s_.resize(base_);
		for (sv p : {a, b, c, d, e}) {
			if (p.empty())
				continue;
			if (s_.size() > base_)
				s_ += '/';
			s_.append(p.data(), p.size());
		}
		return s_.c_str();
	}

private:
	std::string s_;
	size_t base_;
};

// Decimal text of v in buf (no allocation).
sv decimal(uint64_t v, char (&buf)[24])
{
	char *e = buf + sizeof(buf), *p = e;
	do
		*--p = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	return sv(p, (size_t)(e - p));
}

// Names of a directory's entries in directory order (not "." and ".."); 0, or the
// errno of opening or reading the directory.
int list_dir(const char *path, std::vector<std::string> &names)
{
	names.clear();
	DIR *d = opendir(path);
	if (d == nullptr)
		return errno;
	int err;
	for (;;) {
		errno = 0;
		struct dirent *e = readdir(d);
		if (e == nullptr) {
			err = errno;
			break;
		}
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		names.emplace_back(e->d_name);
	}
	closedir(d);
	return err;
}

} // namespace

std::vector<ProcEntry> read_procs(const std::string &proc_root, uint64_t page_kb, bool want_stat, bool want_io,
				  int &err)
{
	std::vector<ProcEntry> out;
	std::vector<std::string> names;
	err = list_dir(proc_root.c_str(), names);
	if (err != 0)
		return out;
	// status is read after one '\n' of its own: _status_int searches b"\n" + status.
	std::string stat_buf(READ_MAX, '\0'), status_buf(READ_MAX + 1, '\n'), io_buf(READ_MAX, '\0');
	Path path(proc_root);
	char num[24];
	for (const std::string &name : names) {
		ProcEntry e;
		if (!name_u64(name.c_str(), e.pid))
			continue;
		// As Python does: stat and status under the pid's own decimal text, io under the entry's name.
		sv pid = decimal(e.pid, num);
		size_t stat_len = 0, status_len = 0, io_len = 0;
		if (want_stat && slurp(path.at(pid, "stat"), stat_buf.data(), stat_len) &&
		    slurp(path.at(pid, "status"), status_buf.data() + 1, status_len)) {
			sv stat(stat_buf.data(), stat_len), status(status_buf.data(), status_len + 1);
			if (parse_sample(stat, status, page_kb, e.f)) {
				e.stat = Got::Parsed;
			} else {
				e.stat = Got::Raw;
				e.stat_raw.assign(stat);
				e.status_raw.assign(status.substr(1));
			}
		}
		if (want_io && slurp(path.at(name, "io"), io_buf.data(), io_len)) {
			sv io(io_buf.data(), io_len);
			e.io = parse_io(io, e.wchar, e.read_bytes, e.write_bytes);
			if (e.io == Got::Raw)
				e.io_raw.assign(io);
		}
		if (e.stat != Got::None || e.io != Got::None)
			out.push_back(std::move(e));
	}
	return out;
}

ThreadCtxt ctxt_of_threads(const std::string &proc_root, uint64_t pid)
{
	ThreadCtxt r;
	char num[24];
	Path path(proc_root);
	sv p = decimal(pid, num);
	std::vector<std::string> tids;
	if (list_dir(path.at(p, "task"), tids) != 0)
		return r; // None
	std::string buf(READ_MAX + 1, '\n');
	for (const std::string &tid : tids) {
		size_t len = 0;
		if (!slurp(path.at(p, "task", tid, "status"), buf.data() + 1, len))
			continue; // a thread gone meanwhile
		uint64_t vol = 0, nonvol = 0;
		if (!status_ctxt(sv(buf.data(), len + 1), vol, nonvol) || __builtin_add_overflow(r.ctxt, vol, &r.ctxt) ||
		    __builtin_add_overflow(r.ctxt, nonvol, &r.ctxt) ||
		    __builtin_add_overflow(r.nonvol_ctxt, nonvol, &r.nonvol_ctxt)) {
			r = ThreadCtxt();
			r.got = Got::Raw;
			return r;
		}
	}
	r.got = Got::Parsed;
	return r;
}

std::vector<LoopThread> loop_threads(const std::string &proc_root, const std::vector<uint64_t> &pids,
				     const std::unordered_set<uint64_t> &known, int64_t budget)
{
	static constexpr sv EPOLL = "do_epoll_wait";
	std::vector<LoopThread> seen;
	std::unordered_map<uint64_t, size_t> at; // tid -> index in seen (a dict keeps first-sight order)
	std::vector<std::string> tids;
	std::string buf(READ_MAX, '\0');
	Path path(proc_root);
	char num[24], tnum[24];
	for (uint64_t pid : pids) {
		if (budget <= 0)
			break; // nothing further would be read
		sv p = decimal(pid, num);
		if (list_dir(path.at(p, "task"), tids) != 0)
			continue;
		for (const std::string &name : tids) {
			if (budget <= 0)
				break;
			budget--;
			uint64_t tid;
			if (!name_u64(name.c_str(), tid))
				continue; // not a thread (Python's int() would raise here)
			if (known.count(tid) == 0) {
				size_t len = 0;
				if (!slurp(path.at(p, "task", name, "wchan"), buf.data(), len) || sv(buf.data(), len) != EPOLL)
					continue;
			}
			auto [it, fresh] = at.emplace(tid, seen.size());
			if (fresh)
				seen.emplace_back();
			LoopThread &t = seen[it->second];
			t.pid = pid;
			t.tid = tid;
		}
	}
	std::vector<LoopThread> out;
	out.reserve(seen.size());
	for (LoopThread &t : seen) {
		size_t len = 0;
		if (!slurp(path.at(decimal(t.pid, num), "task", decimal(t.tid, tnum), "schedstat"), buf.data(), len))
			continue; // gone meanwhile: left out
		sv text(buf.data(), len);
		// split()[1]: the second whitespace-separated field.
		sv w[2];
		if (split_words(text, w, 2) == 2 && digits_u64(w[1], t.run_delay_ns)) {
			t.got = Got::Parsed;
		} else {
			t.got = Got::Raw;
			t.raw.assign(text);
		}
		out.push_back(std::move(t));
	}
	return out;
}

} // namespace ks::procs
