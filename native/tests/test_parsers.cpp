// SPDX-License-Identifier: MIT
// Parsers on the recorded fixture (tests/fixtures/proc_tree), and the
// degradation rules: missing file / field -> null + one warning.
#include "check.h"
#include "sources.h"

#include <algorithm>

using namespace ks;

static const std::string kT0 = std::string(KS_FIXTURES) + "/proc_tree";

static std::optional<uint64_t> u(const Event &e, const char *k)
{
	const Field *f = e.find(k);
	if (!f || f->kind != Field::U64)
		return std::nullopt;
	return f->u;
}

static bool is_null(const Event &e, const char *k)
{
	const Field *f = e.find(k);
	return f && f->kind == Field::Null;
}

// The first event of a type (with key == name when given); a failed CHECK
// and an empty event when there is none.
static Event find(const std::vector<Event> &ev, const std::string &type, const char *key = nullptr,
		  const std::string &name = "")
{
	for (const Event &e : ev)
		if (e.type == type && (!key || (e.find(key) && e.find(key)->s == name)))
			return e;
	fprintf(stderr, "no %s event %s\n", type.c_str(), name.c_str());
	CHECK(false);
	return Event("", 0);
}

static void test_pure_parsers()
{
	U64Map mem = parse_meminfo(slurp(kT0 + "/proc/meminfo"));
	CHECK(mem["MemTotal"] == 24684084);
	CHECK(mem["MemAvailable"] == 24167240);
	CHECK(mem["Active(anon)"] == 1636);
	CHECK(mem.count("HugePages_Total") == 1);

	auto l = parse_loadavg(slurp(kT0 + "/proc/loadavg"));
	CHECK(l.has_value());
	if (l) {
		CHECK(l->load_1min == 0.17 && l->load_5min == 0.10 && l->load_15min == 0.03);
		CHECK(l->runnable == 1 && l->total == 134 && l->last_pid == 5334);
	}
	CHECK(!parse_loadavg("garbage").has_value());

	ProcStat s = parse_proc_stat(slurp(kT0 + "/proc/stat"));
	CHECK(s.have_cpu && s.cpu.size() == 10);
	CHECK(s.cpu[0] == 2199 && s.cpu[2] == 1568 && s.cpu[3] == 58226 && s.cpu[7] == 5);
	CHECK(s.cpu_count == 2);
	CHECK(s.ctxt == 305957u && s.processes == 5336u && s.intr == 126628u);
	CHECK(s.procs_running == 1u && s.procs_blocked == 0u);

	U64Map vm = parse_vmstat(slurp(kT0 + "/proc/vmstat"));
	CHECK(vm["pgfault"] == 1690534 && vm["pgmajfault"] == 984 && vm["nr_dirty"] == 766);

	auto blk = parse_numbers(slurp(kT0 + "/sys/block/vda/stat"));
	CHECK(blk.size() == 17);
	CHECK(blk[0] == 30026 && blk[2] == 2662010 && blk[9] == 3428 && blk[10] == 7830);

	auto rows = parse_net_dev(slurp(kT0 + "/proc/net/dev"));
	CHECK(rows.size() == 4);
	auto eth = std::find_if(rows.begin(), rows.end(), [](auto &r) { return r.name == "eth0"; });
	CHECK(eth != rows.end());
	if (eth != rows.end()) {
		CHECK(eth->v.size() == 16);
		CHECK(eth->v[0] == 56192927 && eth->v[1] == 1814 && eth->v[8] == 117376 && eth->v[9] == 1156);
	}

	std::array<uint64_t, 16> st{};
	uint64_t n = count_tcp_states(slurp(kT0 + "/proc/net/tcp"), st);
	n += count_tcp_states(slurp(kT0 + "/proc/net/tcp6"), st);
	CHECK(n == 11 && st[1] == 2 && st[6] == 7 && st[10] == 2);

	I64Map tcp = parse_snmp_section(slurp(kT0 + "/proc/net/snmp"), "Tcp");
	CHECK(tcp["ActiveOpens"] == 25 && tcp["OutSegs"] == 1203 && tcp["MaxConn"] == -1);
	CHECK(tcp.count("InDatagrams") == 0); // Udp: must not leak in (nor "UdpLite:")
	I64Map ext = parse_snmp_section(slurp(kT0 + "/proc/net/netstat"), "TcpExt");
	CHECK(ext.count("ListenDrops") == 1 && ext.count("TCPSynRetrans") == 1);
	CHECK(ext.count("InOctets") == 0); // IpExt:

	Psi p = parse_psi(slurp(kT0 + "/proc/pressure/cpu"));
	CHECK(p.some && p.full);
	if (p.some)
		CHECK(p.some->avg10 == 0.07 && p.some->avg60 == 0.70 && p.some->total_us == 3787840);
	Psi only_some = parse_psi("some avg10=1.50 avg60=0.00 avg300=0.00 total=42\n");
	CHECK(only_some.some && !only_some.full);
}

static void test_scraper_on_fixture()
{
	Scraper s(kT0 + "/proc", kT0 + "/sys");
	auto ev = s.collect_at(1000, 1000);
	std::vector<std::string> types;
	for (auto &e : ev)
		types.push_back(e.type);
	// Sources run in the order of their registered names: block loadavg
	// meminfo netdev psi stat tcp tcp_retrans vmstat.
	std::vector<std::string> want = {"block", "block", "load", "memory", "net_dev", "net_dev",
					 "net_dev", "net_dev", "psi", "psi", "psi", "cpu",
					 "tcp", "tcp_retrans", "vmstat"};
	CHECK(types == want);
	std::vector<std::string> names;
	for (const auto &src : registered_sources())
		names.push_back(src.first);
	CHECK((names == std::vector<std::string>{"block", "loadavg", "meminfo", "netdev", "psi", "stat",
						 "tcp", "tcp_retrans", "vmstat"}));
	CHECK(s.warnings().count() == 0);
	for (auto &w : s.warnings().list())
		fprintf(stderr, "unexpected warning: %s\n", w.c_str());
	for (auto &e : ev) {
		CHECK(e.ts_ns == 1000);
		std::string line = event_to_line(e);
		CHECK(!line.empty() && line.size() < 2048 && line.back() == '\n');
	}
	// loop* skipped, zram0 kept, sorted.
	CHECK(ev[0].find("device")->s == "vda" && ev[1].find("device")->s == "zram0");
	Event mem = find(ev, "memory"), cpu = find(ev, "cpu"), tcp = find(ev, "tcp");
	CHECK(u(mem, "mem_total_kb") == 24684084u && u(mem, "hugepages_total") == 0u);
	CHECK(u(cpu, "cpu_count") == 2u && u(cpu, "ctxt_total") == 305957u);
	CHECK(u(tcp, "time_wait") == 7u && u(tcp, "listen") == 2u && u(tcp, "total") == 11u);
	CHECK(u(find(ev, "tcp_retrans"), "active_opens_total") == 25u);
	CHECK(u(find(ev, "psi", "resource", "cpu"), "some_total_us") == 3787840u);
	CHECK(u(find(ev, "vmstat"), "oom_kill_total") == 0u);
	// First read: no interval, so the per-interval values are null.
	CHECK(is_null(cpu, "user_pct") && is_null(cpu, "ctxt_per_sec") && is_null(ev[0], "util_pct"));
}

static void test_missing_field_and_file()
{
	std::string root = make_tmpdir();
	std::string mem = slurp(kT0 + "/proc/meminfo");
	size_t at = mem.find("MemAvailable:");
	mem.erase(at, mem.find('\n', at) - at + 1);
	write_text(root + "/proc/meminfo", mem);
	// cpu pressure without a "full" line (kernels before 5.13).
	write_text(root + "/proc/pressure/cpu", "some avg10=0.50 avg60=0.25 avg300=0.10 total=1234\n");

	Scraper s(root + "/proc", root + "/sys");
	for (int i = 0; i < 3; i++) {
		auto ev = s.collect_at(1000 + i, 1000 + i * 1000000000ULL);
		CHECK(ev.size() == 9); // load memory psi*3 cpu tcp tcp_retrans vmstat
		Event mem = find(ev, "memory");
		CHECK(is_null(mem, "mem_available_kb") && u(mem, "mem_total_kb") == 24684084u);
		CHECK(is_null(find(ev, "load"), "load_1min"));
		Event psi_cpu = find(ev, "psi", "resource", "cpu");
		CHECK(u(psi_cpu, "some_total_us") == 1234u && is_null(psi_cpu, "full_avg10") &&
		      is_null(psi_cpu, "full_total_us"));
	}
	// One warning per (file, field), however many reads.
	auto &w = s.warnings().list();
	auto count = [&](const std::string &needle) {
		return std::count_if(w.begin(), w.end(),
				     [&](auto &x) { return x.find(needle) != std::string::npos; });
	};
	CHECK(count("MemAvailable") == 1);
	CHECK(count(root + "/proc/loadavg: cannot read") == 1);
	CHECK(count(root + "/proc/pressure/cpu: line \"full\" missing") == 1);
	CHECK(count(root + "/sys/block") == 1);
	CHECK(count(root + "/proc/net/tcp6") == 1);
	for (auto &x : w)
		fprintf(stderr, "  warning seen: %s\n", x.c_str());
	size_t n = w.size();
	s.collect_at(5000, 5000000000ULL);
	CHECK(s.warnings().count() == n);
	rm_rf(root);
}

static void test_short_block_stat()
{
	// The older 11-column format is fine; fewer columns: nulls + one warning.
	std::string root = make_tmpdir();
	write_text(root + "/sys/block/sda/stat", "1 2 3 4 5 6 7 8 9 10 11\n");
	write_text(root + "/sys/block/sdb/stat", "1 2 3 4 5 6 7\n");
	write_text(root + "/sys/block/loop0/stat", "1 2 3 4 5 6 7 8 9 10 11\n");
	write_text(root + "/sys/block/ram0/stat", "1 2 3 4 5 6 7 8 9 10 11\n");
	Scraper s(root + "/proc", root + "/sys");
	auto ev = s.collect_at(1, 1);
	std::vector<Event> blk;
	for (auto &e : ev)
		if (e.type == "block")
			blk.push_back(e);
	CHECK(blk.size() == 2);
	if (blk.size() == 2) {
		CHECK(u(blk[0], "weighted_io_time_ms_total") == 11u);
		CHECK(u(blk[1], "sectors_written_total") == 7u && is_null(blk[1], "in_flight"));
	}
	size_t sdb_warn = 0;
	for (auto &x : s.warnings().list())
		sdb_warn += x.find("sdb/stat") != std::string::npos;
	CHECK(sdb_warn == 4); // write_time, in_flight, io_time, weighted_io_time
	rm_rf(root);
}

int main()
{
	test_pure_parsers();
	test_scraper_on_fixture();
	test_missing_field_and_file();
	test_short_block_stat();
	TEST_MAIN_END();
}
