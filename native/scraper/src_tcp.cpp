// SPDX-License-Identifier: MIT
// tcp <- /proc/net/tcp + /proc/net/tcp6: sockets per state (gauges).
#include "sources.h"

namespace ks {

uint64_t count_tcp_states(std::string_view text, std::array<uint64_t, 16> &counts)
{
	uint64_t n = 0;
	bool header = true;
	for (auto line : split_lines(text)) {
		if (header) { // "  sl  local_address rem_address   st ..."
			header = false;
			continue;
		}
		auto w = split_ws(line);
		// "N: local rem st ...": st is two hex digits.
		if (w.size() < 4 || w[3].size() != 2)
			continue;
		unsigned st = 0;
		bool ok = true;
		for (char ch : w[3]) {
			int d = ch >= '0' && ch <= '9' ? ch - '0'
			      : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
			      : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
			ok = ok && d >= 0;
			st = st * 16 + (unsigned)(d < 0 ? 0 : d);
		}
		if (!ok || st >= counts.size())
			continue;
		counts[st]++;
		n++;
	}
	return n;
}

namespace {

// include/net/tcp_states.h
enum { ESTABLISHED = 1, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE,
       CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV };

class TcpSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::array<uint64_t, 16> n{};
		uint64_t total = 0;
		int files = 0;
		for (const char *f : {"/net/tcp", "/net/tcp6"}) {
			std::string text;
			// No tcp6 on a kernel without IPv6: warned once, IPv4 still counted.
			if (!read_or_warn(c, c.proc_root + f, text))
				continue;
			files++;
			total += count_tcp_states(text, n);
		}
		auto v = [&](uint64_t x) { return files ? std::optional<uint64_t>(x) : std::nullopt; };
		Event e("tcp", c.ts_ns);
		e.u64("established", v(n[ESTABLISHED]));
		e.u64("syn_sent", v(n[SYN_SENT]));
		// Request sockets show as SYN_RECV; count NEW_SYN_RECV there too in case.
		e.u64("syn_recv", v(n[SYN_RECV] + n[NEW_SYN_RECV]));
		e.u64("fin_wait1", v(n[FIN_WAIT1]));
		e.u64("fin_wait2", v(n[FIN_WAIT2]));
		e.u64("time_wait", v(n[TIME_WAIT]));
		e.u64("close", v(n[CLOSE]));
		e.u64("close_wait", v(n[CLOSE_WAIT]));
		e.u64("last_ack", v(n[LAST_ACK]));
		e.u64("listen", v(n[LISTEN]));
		e.u64("closing", v(n[CLOSING]));
		e.u64("total", v(total));
		c.out.push_back(std::move(e));
	}
};

const RegisterSource kRegister("tcp", make_source<TcpSource>);

} // namespace

} // namespace ks
