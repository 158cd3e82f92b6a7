// SPDX-License-Identifier: MIT
#include "sources.h"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

namespace ks {

std::vector<std::string_view> split_lines(std::string_view text)
{
	std::vector<std::string_view> lines;
	while (!text.empty()) {
		size_t nl = text.find('\n');
		lines.push_back(text.substr(0, nl));
		if (nl == std::string_view::npos)
			break;
		text.remove_prefix(nl + 1);
	}
	return lines;
}

static bool is_ws(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

std::vector<std::string_view> split_ws(std::string_view line)
{
	std::vector<std::string_view> words;
	size_t i = 0;
	while (i < line.size()) {
		while (i < line.size() && is_ws(line[i]))
			i++;
		size_t start = i;
		while (i < line.size() && !is_ws(line[i]))
			i++;
		if (i > start)
			words.push_back(line.substr(start, i - start));
	}
	return words;
}

template <typename T> static bool parse_whole(std::string_view s, T &v)
{
	if (s.empty())
		return false;
	auto r = std::from_chars(s.data(), s.data() + s.size(), v);
	return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool to_u64(std::string_view s, uint64_t &v) { return parse_whole(s, v); }
bool to_i64(std::string_view s, int64_t &v) { return parse_whole(s, v); }
bool to_f64(std::string_view s, double &v) { return parse_whole(s, v); }

// Reads fd to EOF into out: read(), or with at_offset pread() from offset 0 on
// (a kept procfs file: a read at offset 0 makes its text anew).
static int read_fd(int fd, bool at_offset, std::string &out)
{
	out.clear();
	char buf[16384];
	off_t off = 0;
	for (;;) {
		ssize_t n = at_offset ? pread(fd, buf, sizeof(buf), off) : read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		if (n == 0)
			return 0;
		out.append(buf, (size_t)n);
		off += n;
	}
}

int read_file(const std::string &path, std::string &out)
{
	out.clear();
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = read_fd(fd, false, out);
	close(fd);
	return err;
}

// Descriptors this process holds: /proc/self/fd's size (Linux 6.2 on), else its entries
// (less the one listing them).
static std::optional<uint64_t> own_fd_count()
{
	struct stat st;
	if (stat("/proc/self/fd", &st) != 0)
		return std::nullopt;
	if (st.st_size > 0)
		return (uint64_t)st.st_size;
	int fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return std::nullopt;
	uint64_t n = 0;
	bool ok = for_each_dirent(fd, [&n](const char *name, unsigned char) { n += name[0] != '.'; });
	close(fd);
	if (!ok || n == 0)
		return std::nullopt;
	return n - 1;
}

int read_file_at(int dirfd, const std::string &dir, const char *name, std::string &out)
{
	if (dirfd < 0)
		return read_file(dir + "/" + name, out);
	out.clear();
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = read_fd(fd, false, out);
	close(fd);
	return err;
}

FileCache::~FileCache()
{
	for (const Kept &k : kept_)
		close(k.fd);
}

int FileCache::read(const std::string &path, std::string &out)
{
	for (size_t i = 0; i < kept_.size(); i++) {
		Kept &k = kept_[i];
		if (k.path != path)
			continue;
		if (k.gen == gen_) {
			out = k.text;
			return 0;
		}
		if (read_fd(k.fd, true, out) == 0) {
			k.text = out;
			k.gen = gen_;
			return 0;
		}
		// Gone since (its netns, its device): open it once more below.
		close(k.fd);
		kept_.erase(kept_.begin() + (ptrdiff_t)i);
		break;
	}
	out.clear();
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = read_fd(fd, false, out);
	struct statfs sfs;
	if (err == 0 && !no_room_ && kept_.size() < kMaxKept && fstatfs(fd, &sfs) == 0 &&
	    (sfs.f_type == PROC_SUPER_MAGIC || sfs.f_type == SYSFS_MAGIC)) {
		std::optional<uint64_t> held = own_fd_count();
		if (held && *held + kFdReserve < kFdsWorthReading) {
			kept_.push_back(Kept{path, fd, out, gen_});
			return 0;
		}
		no_room_ = true;
	}
	close(fd);
	return err;
}

bool for_each_dirent(int fd, const std::function<void(const char *, unsigned char)> &f)
{
	alignas(8) char buf[16384];
	for (;;) {
		ssize_t n = getdents64(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return false;
		if (n == 0)
			return true;
		for (ssize_t off = 0; off < n;) {
			const auto *de = (const struct dirent64 *)(buf + off);
			f(de->d_name, de->d_type);
			off += de->d_reclen;
		}
	}
}

const std::vector<std::string> *ProcList::get(const std::string &proc_root)
{
	if (fresh_ && root_ == proc_root)
		return ok_ ? &names_ : nullptr;
	fresh_ = true;
	root_ = proc_root;
	names_.clear();
	ok_ = procfs_ = false;
	int fd = open(proc_root.c_str(), O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return nullptr;
	struct statfs sfs;
	procfs_ = fstatfs(fd, &sfs) == 0 && sfs.f_type == PROC_SUPER_MAGIC;
	// An error part way (a process gone under the cursor is none) ends the
	// list there, as readdir(3) would.
	for_each_dirent(fd, [this](const char *name, unsigned char) {
		if (name[0] >= '0' && name[0] <= '9')
			names_.emplace_back(name);
	});
	close(fd);
	ok_ = true;
	return &names_;
}

bool read_or_warn(Ctx &c, const std::string &path, std::string &out)
{
	int err = read_file(path, out);
	if (err == 0)
		return true;
	c.warn.warn(path, "", std::string("cannot read: ") + strerror(err));
	return false;
}

std::optional<uint64_t> counter_delta(std::optional<uint64_t> prev, std::optional<uint64_t> cur)
{
	if (!prev || !cur || *cur < *prev)
		return std::nullopt;
	return *cur - *prev;
}

std::optional<double> counter_rate(std::optional<uint64_t> prev, std::optional<uint64_t> cur,
				   double dt_s)
{
	auto d = counter_delta(prev, cur);
	if (!d || !(dt_s > 0)) // NaN dt: first collect
		return std::nullopt;
	return (double)*d / dt_s;
}

std::optional<uint64_t> field_or_warn(Ctx &c, const std::string &file, const U64Map &m,
				      const char *key)
{
	auto it = m.find(key);
	if (it != m.end())
		return it->second;
	c.warn.warn(file, key, std::string("field ") + key + " missing");
	return std::nullopt;
}

void Warnings::warn(const std::string &file, const std::string &field, const std::string &msg)
{
	if (!seen_.emplace(file, field).second)
		return;
	list_.push_back(file + ": " + msg);
	if (sink)
		sink(list_.back());
}

bool read_kept_or_warn(Ctx &c, const std::string &path, std::string &out)
{
	int err = c.files.read(path, out);
	if (err == 0)
		return true;
	c.warn.warn(path, "", std::string("cannot read: ") + strerror(err));
	return false;
}

void KeyTableSource::collect(Ctx &c)
{
	path_.assign(c.proc_root).append("/").append(file_);
	bool ok = read_kept_or_warn(c, path_, text_);
	// The first line of each wanted key, as the file's U64Map parser keeps it.
	std::vector<std::optional<uint64_t>> val(n_keys_);
	const size_t n = n_keys_;
	size_t found = 0;
	std::string_view text = ok ? std::string_view(text_) : std::string_view();
	while (!text.empty() && found < n) {
		size_t nl = text.find('\n');
		std::string_view line = text.substr(0, nl);
		text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
		std::string_view key;
		uint64_t v;
		if (!parse_line_(line, key, v))
			continue;
		for (size_t i = 0; i < n; i++)
			if (!val[i] && key_views_[i] == key) {
				val[i] = v;
				found++;
			}
	}
	Event e(type_, c.ts_ns);
	for (size_t i = 0; i < n_keys_; i++) {
		if (ok && !val[i])
			c.warn.warn(path_, keys_[i].key, std::string("field ") + keys_[i].key + " missing");
		e.u64(keys_[i].field, ok ? val[i] : std::nullopt);
	}
	c.out.push_back(std::move(e));
}

} // namespace ks
