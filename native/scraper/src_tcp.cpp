// SPDX-License-Identifier: MIT
// tcp <- TCP sockets per state (gauges), IPv4 and IPv6 together:
//  * live host (proc root "/proc"): a NETLINK_SOCK_DIAG dump (inet_diag) in
//    the scraper's own network namespace, as ss and node_exporter do.
//    Reading /proc/net/tcp{,6} walks every bucket of the established hash (a
//    cond_resched each, 2^18 buckets on a mid-size host) twice, ~10 ms here;
//    a SOCK_DIAG_BY_FAMILY dump skips the empty buckets but still visits
//    them, once per family (AF_INET, AF_INET6: ~3.6 ms); the older
//    TCPDIAG_GETSOCK request dumps both families in one walk (~1.8 ms), so
//    it goes first, SOCK_DIAG_BY_FAMILY per family where the kernel refuses
//    it.  One dump per collect (TcpSockets, Ctx::tcp), also giving the
//    limits source its ephemeral ports.
//  * any other proc root (a recorded tree: "/proc/." reads the live files
//    too), or when sock_diag is unavailable (no CONFIG_INET_DIAG / tcp_diag,
//    or EPERM under a seccomp or LSM policy; warned once): PROC/net/tcp and
//    PROC/net/tcp6, count_tcp_states.
// Both give the same states: a request socket is SYN_RECV (the kernel's
// NEW_SYN_RECV, counted there too), a timewait socket its substate
// (TIME_WAIT, or FIN_WAIT2 for an orphan past FIN_WAIT1).
#include "sources.h"

#include <cerrno>
#include <cstring>

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

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

TcpDiag::~TcpDiag() { close_socket(); }

void TcpDiag::close_socket()
{
	if (fd_ >= 0)
		::close(fd_);
	fd_ = -1;
}

int TcpDiag::open_socket()
{
	if (fd_ >= 0)
		return 0;
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return errno;
	// A dump never stalls; this only bounds a read should the kernel
	// never end one (the read then falls back to /proc for that second).
	struct timeval tv = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	fd_ = fd;
	return 0;
}

int TcpDiag::dump_one(bool compat, uint8_t family, Counts &out, bool &refused)
{
	refused = false;
	// Both requests ask for every state (TIME_WAIT and request sockets
	// included) and no extensions: per socket an inet_diag_msg and the few
	// small attributes the kernel always adds (~100 bytes).
	struct {
		nlmsghdr nlh;
		union {
			inet_diag_req v1;    // TCPDIAG_GETSOCK: the dump is AF_UNSPEC
			inet_diag_req_v2 v2; // SOCK_DIAG_BY_FAMILY
		};
	} req;
	memset(&req, 0, sizeof(req));
	uint16_t type = compat ? TCPDIAG_GETSOCK : SOCK_DIAG_BY_FAMILY;
	req.nlh.nlmsg_len = NLMSG_LENGTH(compat ? sizeof(req.v1) : sizeof(req.v2));
	req.nlh.nlmsg_type = type;
	req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	uint32_t seq = ++seq_;
	req.nlh.nlmsg_seq = seq;
	if (compat) {
		req.v1.idiag_family = AF_UNSPEC;
		req.v1.idiag_states = ~0u;
	} else {
		req.v2.sdiag_family = family;
		req.v2.sdiag_protocol = IPPROTO_TCP;
		req.v2.idiag_states = ~0u;
	}

	sockaddr_nl kernel;
	memset(&kernel, 0, sizeof(kernel));
	kernel.nl_family = AF_NETLINK;
	for (;;) {
		ssize_t n = sendto(fd_, &req, req.nlh.nlmsg_len, 0, (const sockaddr *)&kernel, sizeof(kernel));
		if (n == (ssize_t)req.nlh.nlmsg_len)
			break;
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 ? errno : EIO;
	}

	// The kernel fills a dump datagram up to the largest read size it has
	// seen, capped at 32 KiB: a buffer of that size is never truncated.
	if (buf_.size() != kBufSize)
		buf_.resize(kBufSize);
	for (;;) {
		iovec iov = {buf_.data(), buf_.size()};
		sockaddr_nl from;
		msghdr msg;
		memset(&msg, 0, sizeof(msg));
		msg.msg_name = &from;
		msg.msg_namelen = sizeof(from);
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		ssize_t n = recvmsg(fd_, &msg, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno; // EAGAIN (the time-out), ENOBUFS, ...
		if (n == 0)
			return EIO;
		if (msg.msg_flags & MSG_TRUNC)
			return EMSGSIZE; // the sockets of the part cut off would be missing
		if (msg.msg_namelen >= sizeof(from) && from.nl_pid != 0)
			continue; // not from the kernel

		size_t len = (size_t)n;
		for (auto *h = (const nlmsghdr *)buf_.data(); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
			if (h->nlmsg_seq != seq)
				continue; // left over from an earlier, abandoned dump
			if (h->nlmsg_type == NLMSG_DONE) {
				// inet_diag ends with an int: 0, or -errno when the dump failed.
				if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
					int err;
					memcpy(&err, NLMSG_DATA(h), sizeof(err));
					if (err < 0)
						return -err;
				}
				return 0;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr)))
					return EIO;
				nlmsgerr e;
				memcpy(&e, NLMSG_DATA(h), sizeof(e));
				if (e.error == 0)
					continue; // an ack; the dump goes on to NLMSG_DONE
				refused = true;
				return -e.error;
			}
			if (h->nlmsg_type != type || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg)))
				continue;
			inet_diag_msg m;
			memcpy(&m, NLMSG_DATA(h), sizeof(m));
			if (m.idiag_state >= out.states.size())
				continue;
			out.states[m.idiag_state]++;
			out.total++;
			if (m.idiag_state != 10) { // TCP_LISTEN
				uint16_t port = ntohs(m.id.idiag_sport);
				if (!out.ports[port]) {
					out.ports[port] = true;
					out.port_list.push_back(port);
				}
			}
		}
	}
}

int TcpDiag::dump(Counts &out)
{
	int err = open_socket();
	for (int attempt = 0; err == 0; attempt++) {
		out.states = {};
		out.total = 0;
		out.ports.assign(65536, false);
		out.port_list.clear();
		bool refused = false;
		if (compat_) {
			err = dump_one(true, AF_UNSPEC, out, refused);
		} else {
			for (uint8_t family : {(uint8_t)AF_INET, (uint8_t)AF_INET6})
				if ((err = dump_one(false, family, out, refused)) != 0)
					break;
		}
		if (err == 0)
			return 0;
		// What is still queued belongs to the failed dump: a new socket
		// starts the next one clean.
		close_socket();
		// A kernel without the TCPDIAG_GETSOCK compat handler says so in
		// NLMSG_ERROR: one dump per family from now on.
		if (!(compat_ && refused && attempt == 0))
			return err;
		compat_ = false;
		err = open_socket();
	}
	return err;
}

bool TcpDiag::unavailable(int err)
{
	switch (err) {
	case EPROTONOSUPPORT: // no NETLINK_SOCK_DIAG
	case EAFNOSUPPORT:    // no AF_NETLINK
	case ENOENT:          // no inet_diag / tcp_diag handler
	case EOPNOTSUPP:
	case EPERM:
	case EACCES:
		return true;
	default:
		return false;
	}
}

std::string TcpSockets::fingerprint(Ctx &c)
{
	std::string fp;
	if (c.files.read(c.proc_root + "/net/snmp", text_) != 0)
		return fp; // empty: never equal, so a dump
	size_t tcp = text_.find("\nTcp: ");
	tcp = tcp == std::string::npos ? tcp : text_.find("\nTcp: ", tcp + 1); // the values line
	if (tcp == std::string::npos)
		return fp;
	fp.assign(text_, tcp, text_.find('\n', tcp + 1) - tcp);
	if (c.files.read(c.proc_root + "/net/sockstat", text_) != 0)
		return std::string();
	size_t at = text_.find("\nTCP: ");
	if (at == std::string::npos)
		return std::string();
	fp.append(text_, at, text_.find('\n', at + 1) - at);
	return fp;
}

const TcpDiag::Counts *TcpSockets::get(Ctx &c)
{
	if (c.proc_root != "/proc" || off_)
		return nullptr;
	if (fresh_)
		return ok_ ? &counts_ : nullptr;
	fresh_ = true;
	std::string fp = fingerprint(c);
	if (ok_ && !fp.empty() && fp == last_fp_ && c.ts_ns - last_dump_ns_ < kReuseMaxNs)
		return &counts_;
	int err = diag_.dump(counts_);
	ok_ = err == 0;
	last_fp_ = ok_ ? fp : std::string();
	last_dump_ns_ = c.ts_ns;
	if (!ok_) {
		// Permanent (no sock_diag, not allowed): /proc from now on.
		// Otherwise /proc for this read, netlink again next time.
		off_ = TcpDiag::unavailable(err);
		c.warn.warn("netlink sock_diag", "tcp",
			    std::string("cannot dump TCP sockets (") + strerror(err) +
				    (err == ENOENT ? ": kernel without CONFIG_INET_DIAG / tcp_diag" : "") +
				    (off_ ? "): counting them from " : "): counting them this time from ") +
				    c.proc_root + "/net/tcp and " + c.proc_root + "/net/tcp6");
	}
	return ok_ ? &counts_ : nullptr;
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
		bool have = false;
		if (const TcpDiag::Counts *live = c.tcp.get(c)) {
			n = live->states;
			total = live->total;
			have = true;
		} else {
			for (const char *f : {"/net/tcp", "/net/tcp6"}) {
				// No tcp6 on a kernel without IPv6: warned once, IPv4 still counted.
				if (!read_or_warn(c, c.proc_root + f, text_))
					continue;
				have = true;
				total += count_tcp_states(text_, n);
			}
		}
		auto v = [&](uint64_t x) { return have ? std::optional<uint64_t>(x) : std::nullopt; };
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

private:
	std::string text_; // reused: no allocation per read once grown
};

const RegisterSource kRegister("tcp", make_source<TcpSource>);

} // namespace

} // namespace ks
