// SPDX-License-Identifier: MIT
// net_dev <- /proc/net/dev, one event per interface.
#include "sources.h"

namespace ks {

std::vector<NetDevRow> parse_net_dev(std::string_view text)
{
	std::vector<NetDevRow> rows;
	for (auto line : split_lines(text)) {
		// Interface names cannot contain ':' (dev_valid_name), the two
		// header lines have '|' before any ':'.
		size_t colon = line.find(':');
		if (colon == std::string_view::npos || line.substr(0, colon).find('|') != std::string_view::npos)
			continue;
		auto name = split_ws(line.substr(0, colon));
		if (name.size() != 1)
			continue;
		NetDevRow r{std::string(name[0]), parse_numbers(line.substr(colon + 1))};
		rows.push_back(std::move(r));
	}
	return rows;
}

namespace {

enum { RX_BYTES = 0, RX_PACKETS = 1, RX_ERRS = 2, RX_DROP = 3,
       TX_BYTES = 8, TX_PACKETS = 9, TX_ERRS = 10, TX_DROP = 11, NCOLS = 12 };
const char *const kColName[NCOLS] = {"rx_bytes", "rx_packets", "rx_errs", "rx_drop",
				     "rx_fifo", "rx_frame", "rx_compressed", "rx_multicast",
				     "tx_bytes", "tx_packets", "tx_errs", "tx_drop"};

using Cols = std::array<std::optional<uint64_t>, NCOLS>;

class NetDevSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string path = c.proc_root + "/net/dev", text;
		if (!read_kept_or_warn(c, path, text))
			return;
		for (const NetDevRow &r : parse_net_dev(text)) {
			Cols cur;
			for (size_t i = 0; i < NCOLS; i++) {
				if (i < r.v.size())
					cur[i] = r.v[i];
				else
					c.warn.warn(path, kColName[i],
						    std::string("column ") + kColName[i] + " missing for " + r.name);
			}
			Event e("net_dev", c.ts_ns);
			e.str("interface", r.name);
			e.u64("rx_bytes_total", cur[RX_BYTES]);
			e.u64("rx_packets_total", cur[RX_PACKETS]);
			e.u64("rx_errors_total", cur[RX_ERRS]);
			e.u64("rx_drops_total", cur[RX_DROP]);
			e.u64("tx_bytes_total", cur[TX_BYTES]);
			e.u64("tx_packets_total", cur[TX_PACKETS]);
			e.u64("tx_errors_total", cur[TX_ERRS]);
			e.u64("tx_drops_total", cur[TX_DROP]);
			c.out.push_back(std::move(e));
		}
	}
};

const RegisterSource kRegister("netdev", make_source<NetDevSource>);

} // namespace

} // namespace ks
