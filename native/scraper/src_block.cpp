// SPDX-License-Identifier: MIT
// block <- /sys/block/<dev>/stat, one event per device (loop*, ram* skipped).
#include "sources.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>

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
enum { RD, RD_MERGED, RD_SECT, RD_MS, WR, WR_MERGED, WR_SECT, WR_MS, IN_FLIGHT, IO_MS, WEIGHTED_MS };
constexpr double kSectorBytes = 512; // stat counts 512-byte sectors whatever the device's block size

using Cols = std::array<std::optional<uint64_t>, kCols>;

// d(num)/d(den), e.g. read ms per completed read; null when den did not move.
std::optional<double> ratio(const Cols &p, const Cols &c, int num, int den)
{
	auto dn = counter_delta(p[num], c[num]), dd = counter_delta(p[den], c[den]);
	if (!dn || !dd || *dd == 0)
		return std::nullopt;
	return (double)*dn / (double)*dd;
}

class BlockSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string dir = c.sys_root + "/block";
		std::vector<std::string> devs;
		if (DIR *d = opendir(dir.c_str())) {
			while (struct dirent *de = readdir(d)) {
				std::string_view n = de->d_name;
				if (n[0] == '.' || n.substr(0, 4) == "loop" || n.substr(0, 3) == "ram")
					continue;
				devs.emplace_back(n);
			}
			closedir(d);
		} else {
			c.warn.warn(dir, "", std::string("cannot list: ") + strerror(errno));
		}
		std::sort(devs.begin(), devs.end());

		std::map<std::string, Cols> now;
		double dt = c.dt_s;
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
			// has no previous read: all rates null.
			auto it = prev_.find(dev);
			Cols prev = it != prev_.end() ? it->second : Cols{};

			Event e("block", c.ts_ns);
			e.str("device", dev);
			for (size_t i = 0; i < kCols; i++)
				e.u64(kColName[i], cur[i]);
			e.f64("read_iops", counter_rate(prev[RD], cur[RD], dt));
			e.f64("write_iops", counter_rate(prev[WR], cur[WR], dt));
			auto rd_sect = counter_rate(prev[RD_SECT], cur[RD_SECT], dt);
			auto wr_sect = counter_rate(prev[WR_SECT], cur[WR_SECT], dt);
			e.f64("read_bytes_per_sec", rd_sect ? std::optional<double>(*rd_sect * kSectorBytes)
							    : std::nullopt);
			e.f64("write_bytes_per_sec", wr_sect ? std::optional<double>(*wr_sect * kSectorBytes)
							     : std::nullopt);
			bool have_dt = dt > 0;
			e.f64("read_await_ms", have_dt ? ratio(prev, cur, RD_MS, RD) : std::nullopt);
			e.f64("write_await_ms", have_dt ? ratio(prev, cur, WR_MS, WR) : std::nullopt);
			// io_ticks and time_in_queue are ms, so per-second rates / 1000
			// are a share of wall time and a mean queue depth.
			auto io_ms = counter_rate(prev[IO_MS], cur[IO_MS], dt);
			auto wt_ms = counter_rate(prev[WEIGHTED_MS], cur[WEIGHTED_MS], dt);
			// io_ticks is sampled at jiffy granularity and can exceed the
			// wall-clock interval slightly; a share is at most 100 %.
			e.f64("util_pct", io_ms ? std::optional<double>(std::min(100.0, *io_ms / 10.0))
						: std::nullopt);
			e.f64("avg_queue_depth", wt_ms ? std::optional<double>(*wt_ms / 1000.0)
						       : std::nullopt);
			c.out.push_back(std::move(e));
			now.emplace(dev, cur);
		}
		// Devices gone since the last read drop out of the state here.
		prev_ = std::move(now);
	}

private:
	std::map<std::string, Cols> prev_;
};

const RegisterSource kRegister("block", make_source<BlockSource>);

} // namespace

} // namespace ks
