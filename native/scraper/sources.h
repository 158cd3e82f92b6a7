// SPDX-License-Identifier: MIT
//
// One small unit per kernel source, src_<name>.cpp: a pure parser over the
// file's text (unit tested on fixtures) and a Source that reads the file and
// emits one event type.  The unit registers its Source itself (RegisterSource
// below); the build compiles every src_*.cpp, so nothing else lists sources.
//
// Events carry what the kernel reports: counters (*_total) and gauges.  Rates
// over a window are derived once, in the feature catalog
// (pipeline/kernelsight/features/catalog.py).  The per-interval values still
// made here each have a reader: cpu *_pct and block util_pct (the catalog,
// per row) and cpu ctxt_per_sec (a cross-check in tests/test_features_io.py).
#pragma once

#include "ks_scraper.h"

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ks {

// ---- text helpers (util.cpp) ----
std::vector<std::string_view> split_lines(std::string_view text);
std::vector<std::string_view> split_ws(std::string_view line);
bool to_u64(std::string_view s, uint64_t &v);
bool to_i64(std::string_view s, int64_t &v);
bool to_f64(std::string_view s, double &v);
// Reads a whole file (procfs files report size 0, so read to EOF).
// Returns 0 or an errno.
int read_file(const std::string &path, std::string &out);
// Reads name in the open directory dirfd (openat: no walk of the directory's
// path again); dirfd < 0 reads dir/name instead.  0 or an errno.
int read_file_at(int dirfd, const std::string &dir, const char *name, std::string &out);
// Reads path, or warns once "cannot read" and returns false.
bool read_or_warn(Ctx &c, const std::string &path, std::string &out);
// Same through Ctx::files (FileCache): for the few files read every collect.
bool read_kept_or_warn(Ctx &c, const std::string &path, std::string &out);

// The limits source reads PROC/PID/limits only of a process holding at least
// this many descriptors (src_limits.cpp).
constexpr uint64_t kFdsWorthReading = 16;

// The few procfs files every collect reads (PROC/stat, meminfo, vmstat, loadavg,
// net/{dev,snmp,netstat,sockstat}) stay open and are read again from offset 0
// (pread): procfs makes their text anew on a read at offset 0, and an open and
// a close cost more than that read for most of them.  A kept file whose read
// fails is closed and opened once more (its netns gone, say).  Kept only:
//  * on procfs and sysfs, whose files are the kernel's own (a recorded tree's
//    regular files may be replaced, not rewritten, between reads);
//  * at most kMaxKept, and only while the process then holds fewer than
//    kFdsWorthReading - kFdReserve descriptors: the scraper's own count stays
//    below the limits source's threshold (room left for a FIFO and the
//    sock_diag socket opened later), so keeping files never makes it a
//    process of its own nofile scan.  A process holding more (the Python
//    module's) keeps none.
// A kept file is read once per collect: a second reader in the same collect
// (loadavg: load and limits; net/snmp: the TCP dump's fingerprint and
// tcp_retrans; net/dev: net_dev and tcp_retrans) gets the same text.
// Per Scraper: one Scraper never reads through another's descriptors.
class FileCache {
public:
	static constexpr size_t kMaxKept = 8;
	static constexpr uint64_t kFdReserve = 2;
	FileCache() = default;
	~FileCache();
	FileCache(const FileCache &) = delete;
	FileCache &operator=(const FileCache &) = delete;
	// Like read_file(path, out): 0 or an errno.
	int read(const std::string &path, std::string &out);
	size_t kept() const { return kept_.size(); }
	void next_collect() { gen_++; }

private:
	struct Kept {
		std::string path;
		int fd;
		std::string text; // as read in collect gen
		uint64_t gen;
	};
	std::vector<Kept> kept_;
	uint64_t gen_ = 1;
	bool no_room_ = false; // the process held too many descriptors: keep none
};

// The entries of PROC whose name starts with a digit (the processes), in
// directory order, listed once per collect for the sources that walk them
// (limits, tcp_retrans).
class ProcList {
public:
	// nullptr when PROC cannot be listed.
	const std::vector<std::string> *get(const std::string &proc_root);
	// Whether PROC is a procfs mount (false for a recorded tree); valid after get().
	bool is_procfs() const { return procfs_; }
	void next_collect() { fresh_ = false; }

private:
	std::vector<std::string> names_;
	std::string root_; // the proc root listed
	bool fresh_ = false, ok_ = false, procfs_ = false;
};

// Calls f(name, d_type) for each entry of the open directory fd (getdents64,
// without opendir's extra fstat); "." and ".." included.  false on an error
// (the entries seen until then were given).
bool for_each_dirent(int fd, const std::function<void(const char *, unsigned char)> &f);

// ---- interval deltas (util.cpp), for the few shares computed per read ----
// Counters only grow.  One lower than last time was reset (device
// re-created, a restored tree) or wrapped: the true delta is unknown, so the
// interval's delta and rate are null rather than negative or ~2^64/dt.
std::optional<uint64_t> counter_delta(std::optional<uint64_t> prev, std::optional<uint64_t> cur);
std::optional<double> counter_rate(std::optional<uint64_t> prev, std::optional<uint64_t> cur,
				   double dt_s);

using U64Map = std::map<std::string, uint64_t, std::less<>>;
using I64Map = std::map<std::string, int64_t, std::less<>>;
// Value of key, or a warning naming (file, key) and nullopt.
std::optional<uint64_t> field_or_warn(Ctx &c, const std::string &file, const U64Map &m,
				      const char *key);

// ---- parsers ----
// /proc/meminfo: "Key:   123 kB" (values as written, i.e. KiB or pages).
U64Map parse_meminfo(std::string_view text);
// /proc/vmstat: "key 123".
U64Map parse_vmstat(std::string_view text);
// One line of each: true and its key and value where the parser above takes
// the line (each parser is these over the lines, the first line of a key kept).
bool meminfo_line(std::string_view line, std::string_view &key, uint64_t &value);
bool vmstat_line(std::string_view line, std::string_view &key, uint64_t &value);

struct LoadAvg {
	double load_1min, load_5min, load_15min;
	uint64_t runnable, total, last_pid;
};
// /proc/loadavg: "0.79 0.36 0.40 1/123 4567".
std::optional<LoadAvg> parse_loadavg(std::string_view text);

struct ProcStat {
	std::vector<uint64_t> cpu; // aggregate "cpu" line: user nice system idle iowait irq softirq steal ...
	bool have_cpu = false;
	uint64_t cpu_count = 0;    // "cpuN" lines
	std::optional<uint64_t> ctxt, processes, intr, procs_running, procs_blocked;
};
ProcStat parse_proc_stat(std::string_view text);

// Whitespace-separated unsigned numbers (/sys/block/*/stat).
std::vector<uint64_t> parse_numbers(std::string_view text);

struct NetDevRow {
	std::string name;
	std::vector<uint64_t> v; // 16 columns: rx bytes packets errs drop fifo frame compressed multicast, tx ...
};
std::vector<NetDevRow> parse_net_dev(std::string_view text);

// Adds one to counts[st] per socket line of /proc/net/tcp{,6}; returns the
// number of socket lines.
uint64_t count_tcp_states(std::string_view text, std::array<uint64_t, 16> &counts);

// The TCP sockets of the caller's network namespace from a NETLINK_SOCK_DIAG
// dump (src_tcp.cpp): every state, no extensions, so little more than one
// inet_diag_msg per socket.  One TCPDIAG_GETSOCK request (both families in one walk of the
// kernel's hash tables), or, where the kernel refuses that (and always with
// compat false), SOCK_DIAG_BY_FAMILY for AF_INET then AF_INET6.  One socket
// and one 32 KiB buffer, kept from the first dump on; a failed dump closes
// the socket (the next dump opens another).
class TcpDiag {
public:
	struct Counts {
		std::array<uint64_t, 16> states{}; // sockets per state (include/net/tcp_states.h)
		uint64_t total = 0;
		std::vector<bool> ports;           // 65536: local port of a socket not listening
		std::vector<uint16_t> port_list;   // the ports set in `ports`, each once (in no order)
	};
	explicit TcpDiag(bool compat = true) : compat_(compat) {}
	~TcpDiag();
	TcpDiag(const TcpDiag &) = delete;
	TcpDiag &operator=(const TcpDiag &) = delete;
	// Fills out (cleared first, its storage reused); returns 0 or an errno.
	int dump(Counts &out);
	// err says sock_diag cannot work here (not built, not allowed), as
	// opposed to one failed dump.
	static bool unavailable(int err);
	// Whether dumps use the one TCPDIAG_GETSOCK request.
	bool compat() const { return compat_; }

private:
	static constexpr size_t kBufSize = 32768;
	int open_socket();
	void close_socket();
	int dump_one(bool compat, uint8_t family, Counts &out, bool &refused);
	bool compat_;
	int fd_ = -1;
	uint32_t seq_ = 0;
	std::vector<char> buf_;
};

// One dump per collect, shared by the sources that count TCP sockets (tcp,
// limits' ephemeral ports): Ctx::tcp.
class TcpSockets {
public:
	// The live host's sockets (proc root "/proc"), dumped on the first call
	// of a collect.  nullptr: count PROC/net/tcp{,6} instead (a recorded
	// tree; or sock_diag unavailable, warned once; or this dump failed).
	const TcpDiag::Counts *get(Ctx &c);
	void next_collect() { fresh_ = false; }

	// The last dump is reused while no TCP segment moved and no TCP socket came or went:
	// PROC/net/snmp's Tcp values (InSegs, OutSegs, opens, resets) and PROC/net/sockstat's
	// TCP line (in use, orphans, TIME_WAIT) unchanged; at most kReuseMaxNs after it (a
	// request socket dropped without a last SYN-ACK changes neither).  An idle host then
	// pays two small reads a second instead of a walk of the established hash.
	static constexpr uint64_t kReuseMaxNs = 10'000'000'000ull;

private:
	std::string fingerprint(Ctx &c);
	TcpDiag diag_;
	TcpDiag::Counts counts_;
	std::string last_fp_, text_;
	uint64_t last_dump_ns_ = 0;
	bool fresh_ = false, ok_ = false, off_ = false;
};

// "Prefix: Name1 Name2\nPrefix: 1 2" pairs of /proc/net/snmp and /proc/net/netstat.
I64Map parse_snmp_section(std::string_view text, std::string_view prefix);
// The values of names[0..n) only, as parse_snmp_section(text, prefix) has them
// (out[i] nullopt where it has no names[i]), without building the map.
void snmp_section_values(std::string_view text, std::string_view prefix, const char *const *names, size_t n,
			 std::optional<int64_t> *out);

struct PsiLine {
	double avg10, avg60, avg300;
	uint64_t total_us;
};
struct Psi {
	std::optional<PsiLine> some, full;
};
Psi parse_psi(std::string_view text);

// ---- cgroup files (src_cgroup.cpp); "key value" files (memory.events,
// cpu.stat, memory.oom_control, memory.stat) go through parse_vmstat ----
// A file holding one number ("123\n"): memory.current, memory.usage_in_bytes,
// cpuacct.usage, memory.failcnt, memory.swap.current.
std::optional<uint64_t> parse_cgroup_number(std::string_view text);
// Values from 2^62 on are "no limit": v1 writes PAGE_COUNTER_MAX * page size
// (9223372036854771712 with 4 KiB pages) where v2 writes "max".
constexpr uint64_t kCgroupUnlimited = 1ULL << 62;
struct CgroupLimit {
	bool valid = false;     // the text was "max" or a number
	bool unlimited = false;
	uint64_t bytes = 0;     // when valid and limited
};
// memory.max ("max" or bytes), memory.limit_in_bytes (bytes).
CgroupLimit parse_cgroup_limit(std::string_view text);

struct CgroupIo {
	uint64_t rbytes = 0, wbytes = 0, rios = 0, wios = 0;
	size_t devices = 0;     // device lines summed
};
// v2 io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" per device, summed.
CgroupIo parse_io_stat(std::string_view text);
// v1 blkio.throttle.io_service_bytes(_recursive) and io_serviced(_recursive):
// "8:0 Read 123" ... "Total 456"; Read and Write summed over the devices.
// Returns {read, write, devices}.
struct BlkioPair {
	uint64_t read = 0, write = 0;
	size_t devices = 0;
};
BlkioPair parse_blkio_throttle(std::string_view text);

// What a cgroup path says about its owner: the last systemd unit component
// (*.service, *.scope, *.slice) and a container id (64 hex digits, bare or in
// docker-ID.scope, cri-containerd-ID.scope, crio-ID.scope, libpod-ID.scope);
// empty when the path shows none.
struct CgroupName {
	std::string unit, container_id;
};
CgroupName parse_cgroup_name(std::string_view path);
// path cut from the front ("..." + its tail) so that its JSON escaped form
// (bytes outside printable ASCII take 6 characters, '"' and '\\' 2) is at
// most max_json characters; unchanged when it fits.
std::string cut_for_json(std::string_view s, size_t max_json);

// ---- filesystems (src_fs.cpp) ----
struct MountEntry {
	std::string device, mountpoint, fstype;
	bool readonly = false;
};
// PROC/self/mounts: "device mountpoint fstype options 0 0", the octal escapes
// (\040 space, \011 tab, \012 newline, \134 backslash) decoded; at most
// max_lines lines read.
std::vector<MountEntry> parse_mounts(std::string_view text, size_t max_lines = 4096);
std::string unescape_mount_field(std::string_view s);
// Filesystems that hold no user data and cannot fill up (proc, sysfs, cgroup,
// devtmpfs, ...); squashfs and iso9660 too (read-only images, always "full").
bool is_pseudo_fs(std::string_view fstype);

// ---- resource limits (src_limits.cpp) ----
// /proc/PID/limits "Max open files" soft and hard limits (nullopt: unlimited
// or absent).
struct NofileLimit {
	std::optional<uint64_t> soft, hard;
	bool found = false;
};
NofileLimit parse_limits_nofile(std::string_view text);
// Local ports in [lo, hi] (the ephemeral range) of the sockets of a
// /proc/net/tcp{,6} text that are not listening, each port once: the ones not
// yet in `seen` (resized to 65536) are marked there and counted.  Distinct
// ports, not sockets: the accepted ends of a listener share its port.
uint64_t count_ephemeral_ports(std::string_view text, uint64_t lo, uint64_t hi, std::vector<bool> &seen);

// ---- the source registry (scraper.cpp) ----
using SourceFactory = std::unique_ptr<Source> (*)();
using SourceRegistry = std::map<std::string, SourceFactory, std::less<>>;

// One namespace-scope object per src_<name>.cpp:
//   const RegisterSource kRegister("name", make_source<NameSource>);
// Every Scraper gets one instance of each registered Source and collects
// them in name order, so the order of events does not depend on link order.
// A name registered twice aborts at start-up.
struct RegisterSource {
	RegisterSource(const char *name, SourceFactory make);
};
template <class S> std::unique_ptr<Source> make_source() { return std::make_unique<S>(); }

// A source that is one file of "key value" pairs mapped onto one event's
// fields (meminfo, vmstat): the file's line parser (meminfo_line,
// vmstat_line), and field <- key pairs.  Only the wanted keys are looked up
// (the first line of each, as the file's U64Map parser keeps).
struct FieldKey {
	const char *field, *key;
};
using KeyLineParser = bool (*)(std::string_view line, std::string_view &key, uint64_t &value);
class KeyTableSource : public Source {
public:
	template <size_t N>
	KeyTableSource(const char *file, const char *type, KeyLineParser parse_line, const FieldKey (&keys)[N])
		: file_(file), type_(type), parse_line_(parse_line), keys_(keys), n_keys_(N)
	{
		for (size_t i = 0; i < N; i++)
			key_views_.emplace_back(keys[i].key);
	}
	void collect(Ctx &c) override;

private:
	const char *file_, *type_;
	KeyLineParser parse_line_;
	const FieldKey *keys_;
	size_t n_keys_;
	std::vector<std::string_view> key_views_;
	std::string path_, text_; // reused: no allocation per read once grown
};
const SourceRegistry &registered_sources();

} // namespace ks
