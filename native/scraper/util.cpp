// SPDX-License-Identifier: MIT
#include "sources.h"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fcntl.h>
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

int read_file(const std::string &path, std::string &out)
{
	out.clear();
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	char buf[16384];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = errno;
			close(fd);
			return err;
		}
		if (n == 0)
			break;
		out.append(buf, (size_t)n);
	}
	close(fd);
	return 0;
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

void KeyTableSource::collect(Ctx &c)
{
	std::string path = c.proc_root + "/" + file_, text;
	bool ok = read_or_warn(c, path, text);
	U64Map m = parse_(text);
	Event e(type_, c.ts_ns);
	for (size_t i = 0; i < n_keys_; i++)
		e.u64(keys_[i].field, ok ? field_or_warn(c, path, m, keys_[i].key) : std::nullopt);
	c.out.push_back(std::move(e));
}

} // namespace ks
