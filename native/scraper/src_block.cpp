// SPDX-License-Identifier: MIT
// block <- /sys/block/<dev>/stat, one event per device (loop*, ram* skipped).
#include "sources.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

namespace ks {

std::vector<uint64_t> parse_numbers(std::string_view text)
{
	std::vector<uint64_t> v;
	uint64_t x;
	for (auto w : split_ws(text)) {
		if (!to_u64(w, x))
			break;
		v.push_back(x);
	}
	return v;
}

namespace {

// The first 11 columns (Documentation/block/stat.rst); later kernels append
// discard and flush columns we do not use.
constexpr size_t kCols = 11;
const char *const kColName[kCols] = {
	"reads_completed_total",  "reads_merged_total",  "sectors_read_total",
	"read_time_ms_total",     "writes_completed_total", "writes_merged_total",
	"sectors_written_total",  "write_time_ms_total", "in_flight",
	"io_time_ms_total",       "weighted_io_time_ms_total",
};
constexpr size_t IO_MS = 9; // io_time_ms_total

using Cols = std::array<std::optional<uint64_t>, kCols>;

class BlockSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string dir = c.sys_root + "/block";
		std::vector<std::string> devs;
		if (int d = open(dir.c_str(), O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC); d >= 0) {
			for_each_dirent(d, [&devs](const char *name, unsigned char) {
				std::string_view n = name;
				if (n[0] == '.' || n.substr(0, 4) == "loop" || n.substr(0, 3) == "ram")
					return;
				devs.emplace_back(n);
			});
			close(d);
		} else {
			c.warn.warn(dir, "", std::string("cannot list: ") + strerror(errno));
		}
		std::sort(devs.begin(), devs.end());

		std::map<std::string, std::optional<uint64_t>> now;
		for (const std::string &dev : devs) {
			std::string path = dir + "/" + dev + "/stat", text;
			if (!read_or_warn(c, path, text))
				continue; // no stat: nothing to say about this device
			std::vector<uint64_t> v = parse_numbers(text);
			Cols cur;
			for (size_t i = 0; i < kCols; i++) {
				if (i < v.size())
					cur[i] = v[i];
				else
					c.warn.warn(path, kColName[i],
						    std::string("field ") + kColName[i] + " missing (" +
							    std::to_string(v.size()) + " columns)");
			}
			// A device seen for the first time (or again after vanishing)
			// has no previous read: util_pct null.
			auto it = prev_io_ms_.find(dev);
			std::optional<uint64_t> prev = it != prev_io_ms_.end() ? it->second : std::nullopt;

			Event e("block", c.ts_ns);
			e.str("device", dev);
			for (size_t i = 0; i < kCols; i++)
				e.u64(kColName[i], cur[i]);
			// io_ticks is in ms, so its per-second rate / 10 is a share of
			// wall time in %.  It is sampled at jiffy granularity and can
			// run slightly ahead of the interval; a share is at most 100 %.
			auto io_ms = counter_rate(prev, cur[IO_MS], c.dt_s);
			e.f64("util_pct", io_ms ? std::optional<double>(std::min(100.0, *io_ms / 10.0))
						: std::nullopt);
			c.out.push_back(std::move(e));
			now.emplace(dev, cur[IO_MS]);
		}
		// Devices gone since the last read drop out of the state here.
		prev_io_ms_ = std::move(now);
	}

private:
	// The one per-interval value left here is util_pct: the catalog takes
	// the highest per-interval share, which window totals cannot give.
	std::map<std::string, std::optional<uint64_t>> prev_io_ms_;
};

const RegisterSource kRegister("block", make_source<BlockSource>);

} // namespace

} // namespace ks
