// SPDX-License-Identifier: MIT
// Parsers on the recorded fixture (tests/fixtures/proc_tree), and the
// degradation rules: missing file / field -> null + one warning.
#include "check.h"
#include "sources.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

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
	// Sources run in the order of their registered names: block cgroup fs limits
	// loadavg meminfo netdev psi stat tcp tcp_retrans vmstat (fs: the live "/" of
	// the fixture's mount table, its pseudo filesystems skipped).
	std::vector<std::string> want = {"block", "block", "cgroup", "cgroup", "cgroup", "cgroup", "filesystem", "limits", "load",
					 "memory", "net_dev", "net_dev", "net_dev", "net_dev", "psi", "psi",
					 "psi", "cpu", "tcp", "tcp_retrans", "vmstat"};
	CHECK(types == want);
	std::vector<std::string> names;
	for (const auto &src : registered_sources())
		names.push_back(src.first);
	CHECK((names == std::vector<std::string>{"block", "cgroup", "fs", "limits", "loadavg", "meminfo", "netdev",
						 "psi", "stat", "tcp", "tcp_retrans", "vmstat"}));
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

// ---- cgroups: parsers on strings in the kernel's formats, then both fixture trees ----
static const std::string kV2 = std::string(KS_FIXTURES) + "/cgroup_v2";

static std::optional<double> f(const Event &e, const char *k)
{
	const Field *x = e.find(k);
	if (!x || x->kind != Field::F64)
		return std::nullopt;
	return x->f;
}

static std::string s_of(const Event &e, const char *k)
{
	const Field *x = e.find(k);
	return x && x->kind == Field::Str ? x->s : std::string("<null>");
}

static std::vector<Event> of_type(const std::vector<Event> &ev, const std::string &type)
{
	std::vector<Event> out;
	for (const Event &e : ev)
		if (e.type == type)
			out.push_back(e);
	return out;
}

static void test_cgroup_parsers()
{
	CHECK(parse_cgroup_number("57864192\n") == 57864192u);
	CHECK(!parse_cgroup_number("max\n") && !parse_cgroup_number(""));

	CgroupLimit l = parse_cgroup_limit("max\n");
	CHECK(l.valid && l.unlimited);
	l = parse_cgroup_limit("536870912\n");
	CHECK(l.valid && !l.unlimited && l.bytes == 536870912u);
	// v1's "unlimited": PAGE_COUNTER_MAX * 4 KiB pages; anything from 2^62 on.
	l = parse_cgroup_limit("9223372036854771712\n");
	CHECK(l.valid && l.unlimited);
	l = parse_cgroup_limit("4611686018427387904\n");
	CHECK(l.valid && l.unlimited);
	l = parse_cgroup_limit("4611686018427387903\n");
	CHECK(l.valid && !l.unlimited);
	CHECK(!parse_cgroup_limit("-1\n").valid && !parse_cgroup_limit("").valid);

	// memory.events, cpu.stat, memory.oom_control: "key value" lines.
	U64Map ev = parse_vmstat("low 0\nhigh 3\nmax 40\noom 2\noom_kill 1\noom_group_kill 0\n");
	CHECK(ev["high"] == 3 && ev["max"] == 40 && ev["oom"] == 2 && ev["oom_kill"] == 1);
	U64Map oc = parse_vmstat("oom_kill_disable 0\nunder_oom 1\noom_kill 4\n");
	CHECK(oc["under_oom"] == 1 && oc["oom_kill"] == 4);

	CgroupIo io = parse_io_stat("259:0 rbytes=1000 wbytes=2000 rios=3 wios=4 dbytes=0 dios=0\n"
				    "253:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=5 dios=1\n");
	CHECK(io.rbytes == 1010 && io.wbytes == 2020 && io.rios == 4 && io.wios == 6 && io.devices == 2);
	CHECK(parse_io_stat("").devices == 0);

	BlkioPair b = parse_blkio_throttle("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n"
					   "8:0 Discard 0\n8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\nTotal 12291\n");
	CHECK(b.read == 4097 && b.write == 8194 && b.devices == 2);
	CHECK(parse_blkio_throttle("Total 0\n").devices == 0);

	const std::string hex = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
	CgroupName n = parse_cgroup_name("/system.slice/docker-" + hex + ".scope");
	CHECK(n.unit == "docker-" + hex + ".scope" && n.container_id == hex);
	n = parse_cgroup_name("/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + hex + ".scope");
	CHECK(n.container_id == hex);
	n = parse_cgroup_name("/machine.slice/libpod-" + hex + ".scope/container");
	CHECK(n.container_id == hex && n.unit == "libpod-" + hex + ".scope");
	n = parse_cgroup_name("/docker/" + hex); // cgroupfs driver: a bare id
	CHECK(n.container_id == hex && n.unit.empty());
	n = parse_cgroup_name("/system.slice/nginx.service");
	CHECK(n.unit == "nginx.service" && n.container_id.empty());
	n = parse_cgroup_name("/process_api/6638f031a58b1d24596eac55890f5e17"); // 32 hex: not a container
	CHECK(n.unit.empty() && n.container_id.empty());
	CHECK(parse_cgroup_name("/").unit.empty());

	CHECK(cut_for_json("/a/b", 10) == "/a/b");
	std::string longp = "/" + std::string(100, 'x') + "/leaf.service";
	std::string cut = cut_for_json(longp, 40);
	CHECK(cut.size() == 40 && cut.substr(0, 3) == "..." && cut.substr(cut.size() - 13) == "/leaf.service");
	// Non-ASCII bytes count 6 (\u00XX).
	CHECK(cut_for_json(std::string(10, '\xff'), 60) == std::string(10, '\xff'));
	CHECK(cut_for_json(std::string(10, '\xff'), 59) == "..." + std::string(9, '\xff'));
}

static void test_cgroup_v2_fixture()
{
	Scraper s(kT0 + "/proc", kV2 + "/sys");
	auto ev = of_type(s.collect_at(1000, 1000), "cgroup");
	std::string root = kV2 + "/sys/fs/cgroup";
	CHECK(ev.size() == 12);
	if (ev.size() != 12)
		return;
	// Near their (effective) limit first, closest first; then by memory (no CPU delta yet).
	std::vector<std::string> order;
	for (auto &e : ev)
		order.push_back(s_of(e, "path"));
	CHECK(order[0] == "/system.slice/nginx.service");
	CHECK(order[1] == "/user.slice" && order[2] == "/user.slice/user-1000.slice");
	CHECK(order[3] == "/user.slice/user-1000.slice/session-3.scope");
	CHECK(order[4] == "/system.slice" && order.back() == "/");
	Event nginx = ev[0];
	struct stat st;
	CHECK(stat((root + "/system.slice/nginx.service").c_str(), &st) == 0 && u(nginx, "cgroup_id") == st.st_ino);
	CHECK(u(nginx, "cgroup2_id") == st.st_ino && u(nginx, "version") == 2u);
	CHECK(s_of(nginx, "unit") == "nginx.service" && is_null(nginx, "container_id"));
	CHECK(u(nginx, "memory_bytes") == 524288000u && u(nginx, "memory_limit_bytes") == 536870912u);
	CHECK(u(nginx, "memory_limit_effective_bytes") == 536870912u && u(nginx, "swap_bytes") == 33554432u);
	CHECK(u(nginx, "events_max_total") == 40u && u(nginx, "events_oom_total") == 2u);
	CHECK(u(nginx, "oom_kill_total") == 1u && is_null(nginx, "failcnt_total") && is_null(nginx, "under_oom"));
	CHECK(f(nginx, "mem_pressure_some_avg10") == 3.15 && u(nginx, "mem_pressure_full_total_us") == 700000u);
	CHECK(u(nginx, "cpu_usage_usec_total") == 61234567u && u(nginx, "io_rbytes_total") == 104857600u);
	CHECK(u(nginx, "io_wios_total") == 1200u);
	// session-3.scope: no limit of its own, user.slice's 1 GiB applies.
	CHECK(is_null(ev[3], "memory_limit_bytes") && u(ev[3], "memory_limit_effective_bytes") == 1073741824u);
	Event cri = find(ev, "cgroup", "unit",
			 "cri-containerd-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c.scope");
	CHECK(s_of(cri, "container_id") == "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c");
	CHECK(u(cri, "cpu_nr_periods_total") == 5000u && u(cri, "cpu_nr_throttled_total") == 700u);
	CHECK(u(cri, "cpu_throttled_usec_total") == 41000000u);
	// The root: no memory.current/max, summed io.stat of two devices.
	Event r = ev.back();
	CHECK(is_null(r, "memory_bytes") && is_null(r, "memory_limit_bytes") && is_null(r, "events_oom_total"));
	CHECK(u(r, "io_rbytes_total") == 8417996800u + 1048576u && u(r, "cpu_usage_usec_total") == 9876543210u);
	CHECK(s.warnings().list().size() == 1); // only: no sys/block in this tree
	// At most cgroups_max lines.
	Scraper s3(kT0 + "/proc", kV2 + "/sys");
	s3.options().cgroups_max = 3;
	CHECK(of_type(s3.collect_at(1, 1), "cgroup").size() == 3);
}

static void test_cgroup_v2_cpu_delta_ranks()
{
	// Second read: the cgroup whose CPU time grew most comes first after the
	// near-limit ones, whatever its memory.
	std::string root = make_tmpdir();
	std::string cg = root + "/sys/fs/cgroup";
	write_text(cg + "/cgroup.controllers", "cpu memory\n");
	for (const char *d : {"/big", "/busy", "/idle"}) {
		write_text(cg + d + "/memory.current", std::string(d) == "/big" ? "900000000\n" : "1000\n");
		write_text(cg + d + "/memory.max", "max\n");
		write_text(cg + d + "/cpu.stat", "usage_usec 100\n");
	}
	Scraper s(root + "/proc", root + "/sys");
	auto a = of_type(s.collect_at(1, 1), "cgroup");
	CHECK(a.size() == 4 && s_of(a[0], "path") == "/big");
	write_text(cg + "/busy/cpu.stat", "usage_usec 500000\n");
	write_text(cg + "/idle/cpu.stat", "usage_usec 200\n");
	auto b = of_type(s.collect_at(2, 1000000001), "cgroup");
	CHECK(b.size() == 4 && s_of(b[0], "path") == "/busy" && s_of(b[1], "path") == "/idle");
	rm_rf(root);
}

static void test_cgroup_v1_fixture()
{
	// Recorded on this VM (native/tests/record_cgroup_fixture.sh): the v1 memory
	// hierarchy with cpu, cpuacct, blkio and the hybrid v2 twin.
	Scraper s(kT0 + "/proc", kT0 + "/sys");
	auto ev = of_type(s.collect_at(1000, 1000), "cgroup");
	CHECK(ev.size() == 4);
	if (ev.size() != 4)
		return;
	const std::string hex = "4f1c0ffee0ddba11c0debeef5eed0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b";
	std::string mem = kT0 + "/sys/fs/cgroup/memory", uni = kT0 + "/sys/fs/cgroup/unified";
	std::string ctr = "/ks-fixture.slice/docker-" + hex + ".scope";
	Event d = ev[0]; // 86 % of its 64 MiB limit: first
	CHECK(s_of(d, "path") == ctr && u(d, "version") == 1u && s_of(d, "container_id") == hex);
	struct stat st, st2;
	CHECK(stat((mem + ctr).c_str(), &st) == 0 && stat((uni + ctr).c_str(), &st2) == 0);
	CHECK(u(d, "cgroup_id") == st.st_ino && u(d, "cgroup2_id") == st2.st_ino);
	CHECK(u(d, "memory_bytes") == 57864192u && u(d, "memory_limit_bytes") == 67108864u);
	CHECK(u(d, "swap_bytes") == 0u && u(d, "failcnt_total") == 0u && u(d, "under_oom") == 0u);
	CHECK(u(d, "oom_kill_total") == 0u && is_null(d, "events_oom_total"));
	CHECK(u(d, "mem_pressure_some_total_us").has_value()); // from the v2 twin
	// The root: "unlimited" is null, never 9223372036854771712.
	Event r = find(ev, "cgroup", "path", "/");
	CHECK(is_null(r, "memory_limit_bytes") && is_null(r, "memory_limit_effective_bytes"));
	CHECK(u(r, "memory_bytes") == parse_cgroup_number(slurp(mem + "/memory.usage_in_bytes")));
	// busy.service: cpuacct.usage in us, throttling from the cpu hierarchy.
	Event busy = find(ev, "cgroup", "path", "/ks-fixture.slice/busy.service");
	std::string cpu = kT0 + "/sys/fs/cgroup/cpu/ks-fixture.slice/busy.service/cpu.stat";
	U64Map cs = parse_vmstat(slurp(cpu));
	CHECK(u(busy, "cpu_nr_throttled_total") == cs["nr_throttled"] && cs["nr_throttled"] > 0);
	CHECK(u(busy, "cpu_throttled_usec_total") == cs["throttled_time"] / 1000);
	CHECK(u(busy, "cpu_usage_usec_total") ==
	      *parse_cgroup_number(slurp(kT0 + "/sys/fs/cgroup/cpuacct/ks-fixture.slice/busy.service/cpuacct.usage")) /
		      1000);
	// blk-throttle saw no bio here ("Total 0" only): unknown, not zero.
	CHECK(is_null(busy, "io_wbytes_total"));
	CHECK(s.warnings().count() == 0);
}

static void test_cgroup_hostile_names()
{
	// Non-UTF-8, quotes, control characters and a path far past 4096 bytes:
	// the line stays valid and within KS_LINE_MAX, the path cut from the front.
	std::string root = make_tmpdir();
	std::string cg = root + "/sys/fs/cgroup", rel;
	write_text(cg + "/cgroup.controllers", "memory\n");
	std::string comp(200, '\xfe');
	comp += "\"\\\n";
	for (int i = 0; i < 20; i++) {
		rel += "/" + comp + std::to_string(i);
		if (mkdir((cg + rel).c_str(), 0755) != 0)
			break; // PATH_MAX
	}
	write_text(cg + "/x\xff.service/memory.current", "5\n");
	Scraper s(root + "/proc", root + "/sys");
	auto ev = of_type(s.collect_at(1, 1), "cgroup");
	CHECK(ev.size() >= 3);
	bool saw_cut = false;
	for (auto &e : ev) {
		std::string line = event_to_line(e);
		CHECK(!line.empty() && line.size() <= 4096);
		CHECK(line.find('\n') == line.size() - 1);
		saw_cut |= s_of(e, "path").substr(0, 3) == "...";
	}
	CHECK(saw_cut);
	Event x = find(ev, "cgroup", "path", "/x\xff.service");
	CHECK(s_of(x, "unit") == "x\xff.service" && u(x, "memory_bytes") == 5u);
	CHECK(event_to_line(x).find("\"path\":\"/x\\u00ff.service\"") != std::string::npos);
	rm_rf(root);
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
		CHECK(ev.size() == 10); // limits load memory psi*3 cpu tcp tcp_retrans vmstat
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

static void test_fs_and_limits_parsers()
{
	auto m = parse_mounts("/dev/vda / ext4 rw,relatime 0 0\n"
			      "tmpfs /mnt/a\\040b\\134c tmpfs ro,nosuid 0 0\n"
			      "short line\n"
			      "proc /proc proc rw 0 0\n");
	CHECK(m.size() == 3);
	if (m.size() == 3) {
		CHECK(m[0].device == "/dev/vda" && m[0].mountpoint == "/" && m[0].fstype == "ext4" && !m[0].readonly);
		CHECK(m[1].mountpoint == "/mnt/a b\\c" && m[1].readonly); // \040 space, \134 backslash
		CHECK(m[2].fstype == "proc");
	}
	CHECK(parse_mounts("a / ext4 rw 0 0\nb /x ext4 rw 0 0\n", 1).size() == 1);
	CHECK(unescape_mount_field("a\\011b\\012") == "a\tb\n" && unescape_mount_field("x\\9") == "x\\9");
	CHECK(is_pseudo_fs("proc") && is_pseudo_fs("cgroup2") && is_pseudo_fs("squashfs") && is_pseudo_fs("devtmpfs"));
	CHECK(!is_pseudo_fs("ext4") && !is_pseudo_fs("tmpfs") && !is_pseudo_fs("xfs") && !is_pseudo_fs("overlay"));

	NofileLimit l = parse_limits_nofile("Limit                     Soft Limit           Hard Limit           Units\n"
					    "Max processes             95964                95964                processes\n"
					    "Max open files            1024                 524288               files\n");
	CHECK(l.found && l.soft == 1024u && l.hard == 524288u);
	l = parse_limits_nofile("Max open files            unlimited            unlimited            files\n");
	CHECK(l.found && !l.soft && !l.hard);
	CHECK(!parse_limits_nofile("Max processes 1 1 processes\n").found);

	const char *tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
			  "   0: 00000000:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
			  "   1: 0100007F:9C41 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 2\n"
			  "   2: 0100007F:0050 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 3\n"
			  "   3: 0100007F:EE47 0100007F:0050 06 00000000:00000000 00:00000000 00000000     0        0 0\n";
	// 0x9C40 = 40000 listening (not counted), 0x9C41 = 40001 counted, port 80 out of range, 0xEE47 = 60999 counted.
	std::vector<bool> seen;
	CHECK(count_ephemeral_ports(tcp, 32768, 60999, seen) == 2);
	CHECK(count_ephemeral_ports(tcp, 32768, 60999, seen) == 0); // the same ports again (tcp6): counted once
	std::vector<bool> none;
	CHECK(count_ephemeral_ports(tcp, 40002, 60998, none) == 0);
}

// ---- tcp on the live host: the sock_diag dump against /proc/net/tcp{,6} ----
static bool text_tcp_counts(std::array<uint64_t, 16> &st, uint64_t &total)
{
	st = {};
	total = 0;
	std::string t;
	bool any = false;
	for (const char *f : {"/proc/net/tcp", "/proc/net/tcp6"})
		if (read_file(f, t) == 0) {
			total += count_tcp_states(t, st);
			any = true;
		}
	return any;
}

static void test_tcp_diag_live()
{
	// Some hundreds of loopback sockets, so that a dump takes several
	// datagrams: TIME_WAIT ones (no descriptor held; the active side closed
	// first) and a listener.
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sockaddr_in a{};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof(a);
	CHECK(l >= 0 && bind(l, (sockaddr *)&a, sizeof(a)) == 0 && listen(l, 64) == 0 &&
	      getsockname(l, (sockaddr *)&a, &alen) == 0);
	for (int i = 0; i < 600 && l >= 0; i++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c < 0 || connect(c, (sockaddr *)&a, sizeof(a)) != 0) {
			if (c >= 0)
				close(c);
			break;
		}
		int s = accept(l, nullptr, nullptr);
		close(c);
		if (s >= 0)
			close(s);
	}

	// Both requests: the one TCPDIAG_GETSOCK walk, and SOCK_DIAG_BY_FAMILY
	// per family (what a kernel refusing the first gets).
	for (bool compat : {true, false}) {
		TcpDiag d(compat);
		TcpDiag::Counts diag;
		int err = d.dump(diag);
		if (TcpDiag::unavailable(err)) {
			fprintf(stderr, "test_tcp_diag_live: sock_diag unavailable here (%s), skipped\n", strerror(err));
			if (l >= 0)
				close(l);
			return;
		}
		CHECK(err == 0);
		if (compat && !d.compat())
			fprintf(stderr, "test_tcp_diag_live: TCPDIAG_GETSOCK refused, dumps by family\n");
		CHECK(compat || !d.compat());
		CHECK(diag.total >= 601);                             // ours at least: the dump is multipart
		CHECK(diag.states[6] >= 600 && diag.states[10] >= 1); // TIME_WAIT, LISTEN
		CHECK(diag.ports.size() == 65536);
		// Sockets on the host come and go: equal once a dump falls between
		// two text reads that agree with each other.
		std::array<uint64_t, 16> before{}, after{};
		uint64_t tb = 0, ta = 0;
		bool same = false;
		for (int tries = 0; tries < 50 && !same; tries++) {
			CHECK(text_tcp_counts(before, tb));
			CHECK(d.dump(diag) == 0); // the same socket and buffer, read after read
			CHECK(text_tcp_counts(after, ta));
			same = before == after && tb == ta && diag.states == before && diag.total == tb;
		}
		CHECK(same);
		if (!same)
			fprintf(stderr, "sock_diag (compat %d) total %llu, /proc/net/tcp{,6} %llu\n", compat,
				(unsigned long long)diag.total, (unsigned long long)tb);
	}

	// The scraper on the live host dumps (no warning); a proc root that is
	// not "/proc" itself reads the text files.  tcp and limits' ephemeral
	// ports agree between the two.
	Scraper live("/proc", "/sys"), text("/proc/.", "/sys");
	bool same = false;
	for (int tries = 0; tries < 20 && !same; tries++) {
		auto t0 = text.collect(), lv = live.collect(), t1 = text.collect();
		same = true;
		for (const char *k : {"established", "listen", "time_wait", "close_wait", "total"}) {
			auto a = u(find(t0, "tcp"), k), b = u(find(lv, "tcp"), k), c = u(find(t1, "tcp"), k);
			same = same && a && a == b && b == c;
		}
		auto a = u(find(t0, "limits"), "ephemeral_ports_used"), b = u(find(lv, "limits"), "ephemeral_ports_used"),
		     c = u(find(t1, "limits"), "ephemeral_ports_used");
		same = same && a && a == b && b == c;
		CHECK(u(find(lv, "tcp"), "total").value_or(0) >= 601);
	}
	CHECK(same);
	for (auto &w : live.warnings().list())
		CHECK(w.find("sock_diag") == std::string::npos);
	if (l >= 0)
		close(l);
}

// ---- the scraper's fast paths against the parsers they stand in for ----
// The word-splitting parsers as they were (split_ws per line, a map of every
// key): the references the line parsers and lookups must agree with.
static U64Map ref_vmstat(std::string_view text)
{
	U64Map m;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		uint64_t v;
		if (w.size() >= 2 && to_u64(w[1], v))
			m.emplace(std::string(w[0]), v);
	}
	return m;
}

static U64Map ref_meminfo(std::string_view text)
{
	U64Map m;
	for (auto line : split_lines(text)) {
		size_t colon = line.find(':');
		if (colon == std::string_view::npos)
			continue;
		auto words = split_ws(line.substr(colon + 1));
		uint64_t v;
		if (!words.empty() && to_u64(words[0], v))
			m.emplace(std::string(line.substr(0, colon)), v);
	}
	return m;
}

static ProcStat ref_proc_stat(std::string_view text)
{
	ProcStat s;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		if (w.empty())
			continue;
		std::string_view k = w[0];
		uint64_t v;
		if (k == "cpu") {
			s.have_cpu = true;
			for (size_t i = 1; i < w.size() && to_u64(w[i], v); i++)
				s.cpu.push_back(v);
		} else if (k.size() > 3 && k.substr(0, 3) == "cpu" && isdigit((unsigned char)k[3])) {
			s.cpu_count++;
		} else if (w.size() >= 2 && to_u64(w[1], v)) {
			if (k == "ctxt")
				s.ctxt = v;
			else if (k == "processes")
				s.processes = v;
			else if (k == "intr")
				s.intr = v;
			else if (k == "procs_running")
				s.procs_running = v;
			else if (k == "procs_blocked")
				s.procs_blocked = v;
		}
	}
	return s;
}

static bool same_stat(const ProcStat &a, const ProcStat &b)
{
	return a.cpu == b.cpu && a.have_cpu == b.have_cpu && a.cpu_count == b.cpu_count && a.ctxt == b.ctxt &&
	       a.processes == b.processes && a.intr == b.intr && a.procs_running == b.procs_running &&
	       a.procs_blocked == b.procs_blocked;
}

static std::string live_or_empty(const char *path)
{
	std::string t;
	return read_file(path, t) == 0 ? t : std::string();
}

static void test_fast_parsers_agree()
{
	const std::string vm_edge = "a 1\na 2\nb x\nb 3\n  c   4  extra\n\td\t5\nnokey\n e:\nf 18446744073709551616\ng -1\n";
	for (const std::string &t : {slurp(kT0 + "/proc/vmstat"), live_or_empty("/proc/vmstat"), vm_edge,
				     std::string("memory.events"), std::string("low 0\nhigh 3\nmax 40\noom 2\noom_kill 1\n")}) {
		CHECK(parse_vmstat(t) == ref_vmstat(t));
	}
	CHECK(parse_vmstat(vm_edge).at("a") == 1 && parse_vmstat(vm_edge).at("b") == 3 && parse_vmstat(vm_edge).at("d") == 5);
	const std::string mem_edge = "K:  12 kB\nK: 13\nL:x\nL: 7\n:5\nM:\n Sp ace: 9\nN:\t\t8 kB\nO 4\n";
	for (const std::string &t : {slurp(kT0 + "/proc/meminfo"), live_or_empty("/proc/meminfo"), mem_edge})
		CHECK(parse_meminfo(t) == ref_meminfo(t));
	CHECK(parse_meminfo(mem_edge).at("K") == 12 && parse_meminfo(mem_edge).at("L") == 7 &&
	      parse_meminfo(mem_edge).at(" Sp ace") == 9 && parse_meminfo(mem_edge).at("") == 5);

	const std::string stat_edge = "cpu  1 2 x 3\ncpu0 1\ncpux 2\nintr 5 6 7\nctxt\nctxt 9\nprocesses  \t 11 z\n\n";
	for (const std::string &t : {slurp(kT0 + "/proc/stat"), live_or_empty("/proc/stat"), stat_edge})
		CHECK(same_stat(parse_proc_stat(t), ref_proc_stat(t)));
	ProcStat se = parse_proc_stat(stat_edge);
	CHECK((se.cpu == std::vector<uint64_t>{1, 2}) && se.cpu_count == 1 && se.intr == 5u && se.ctxt == 9u &&
	      se.processes == 11u);

	// snmp_section_values against parse_snmp_section: every name of the
	// section, one absent, and the corner cases (a second section, values
	// past INT64_MAX, negative, not numbers, near-miss prefixes).
	const std::string snmp_edge = "Tcpx: A\nTcpx: 1\nTcp:A\nTcp:9\n Tcp: A B C D E\n Tcp: 1 -2 x 18446744073709551615\n"
				      "Tcp: A B F\nTcp: 5 6 7\nTcp:\nTcp: G\nTcp: 3\n";
	struct Case {
		std::string text, prefix;
	};
	for (const Case &k : {Case{slurp(kT0 + "/proc/net/snmp"), "Tcp"}, Case{slurp(kT0 + "/proc/net/netstat"), "TcpExt"},
			      Case{live_or_empty("/proc/net/snmp"), "Tcp"}, Case{live_or_empty("/proc/net/netstat"), "TcpExt"},
			      Case{live_or_empty("/proc/net/netstat"), "IpExt"}, Case{snmp_edge, "Tcp"}, Case{"", "Tcp"}}) {
		I64Map m = parse_snmp_section(k.text, k.prefix);
		std::vector<std::string> names;
		for (auto &kv : m)
			names.push_back(kv.first);
		names.push_back("NoSuchName");
		names.push_back("C");
		std::vector<const char *> want;
		for (auto &n : names)
			want.push_back(n.c_str());
		std::vector<std::optional<int64_t>> got(want.size(), int64_t(-7));
		snmp_section_values(k.text, k.prefix, want.data(), want.size(), got.data());
		for (size_t i = 0; i < want.size(); i++) {
			auto it = m.find(want[i]);
			CHECK((it == m.end() ? std::optional<int64_t>() : std::optional<int64_t>(it->second)) == got[i]);
		}
	}
	I64Map e = parse_snmp_section(snmp_edge, "Tcp");
	CHECK(e.at("A") == 1 && e.at("B") == -2 && !e.count("C") && e.at("D") == INT64_MAX && e.at("F") == 7 &&
	      e.at("G") == 3 && !e.count("E"));
}

static void test_dirents_and_proc_list()
{
	// for_each_dirent lists what readdir lists.
	for (const std::string &dir : {std::string("/proc/self/fd"), kT0 + "/proc", std::string("/proc")}) {
		std::vector<std::string> a, b;
		if (DIR *d = opendir(dir.c_str())) {
			while (struct dirent *de = readdir(d))
				a.push_back(de->d_name);
			closedir(d);
		}
		int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		CHECK(fd >= 0);
		CHECK(for_each_dirent(fd, [&b](const char *n, unsigned char) { b.push_back(n); }));
		close(fd);
		std::sort(a.begin(), a.end());
		std::sort(b.begin(), b.end());
		if (dir == "/proc") // processes come and go: ours is in both
			CHECK(std::count(b.begin(), b.end(), std::to_string(getpid())) == 1);
		else if (dir != "/proc/self/fd") // the listing's own descriptor differs
			CHECK(a == b);
		CHECK(std::count(b.begin(), b.end(), ".") == 1 && std::count(b.begin(), b.end(), "..") == 1);
	}

	ProcList live;
	const std::vector<std::string> *pids = live.get("/proc");
	CHECK(pids && live.is_procfs());
	if (pids)
		CHECK(std::count(pids->begin(), pids->end(), std::to_string(getpid())) == 1);
	CHECK(live.get("/proc") == pids); // once per collect
	ProcList fix;
	CHECK(fix.get(kT0 + "/proc") && !fix.is_procfs());
	ProcList none;
	CHECK(none.get("/nonexistent-proc-root") == nullptr);
}

static void test_file_cache()
{
	// A recorded tree's regular file is read, never kept.
	{
		FileCache fc;
		std::string t;
		CHECK(fc.read(kT0 + "/proc/loadavg", t) == 0 && t == slurp(kT0 + "/proc/loadavg") && fc.kept() == 0);
		CHECK(fc.read("/nonexistent/loadavg", t) == ENOENT);
	}
	// A procfs file is kept, read once per collect, and read anew the next.
	{
		FileCache fc;
		std::string a, b;
		CHECK(fc.read("/proc/self/stat", a) == 0 && fc.kept() == 1);
		CHECK(fc.read("/proc/self/stat", b) == 0 && a == b); // same collect: the same text
		fc.next_collect();
		CHECK(fc.read("/proc/self/stat", b) == 0 && fc.kept() == 1 && !b.empty());
		CHECK(b.substr(0, b.find(' ')) == std::to_string(getpid()));
	}
	// A kept file of a process that exited: the kept read fails, one reopen
	// fails too, the error is returned and the file no longer kept.
	{
		int pfd[2];
		CHECK(pipe(pfd) == 0);
		pid_t child = fork();
		if (child == 0) {
			char ch;
			close(pfd[1]);
			while (read(pfd[0], &ch, 1) < 0 && errno == EINTR) {
			}
			_exit(0);
		}
		close(pfd[0]);
		FileCache fc;
		std::string t, path = "/proc/" + std::to_string(child) + "/stat";
		CHECK(fc.read(path, t) == 0 && fc.kept() == 1);
		close(pfd[1]); // the child exits
		waitpid(child, nullptr, 0);
		fc.next_collect();
		int err = fc.read(path, t);
		CHECK(err != 0 && fc.kept() == 0);
	}
	// At most kMaxKept, and none while the process holds many descriptors.
	{
		FileCache fc;
		std::string t;
		const char *files[] = {"/proc/stat", "/proc/meminfo", "/proc/vmstat", "/proc/loadavg", "/proc/net/dev",
				       "/proc/net/snmp", "/proc/net/netstat", "/proc/net/sockstat", "/proc/uptime", "/proc/version"};
		for (const char *f : files)
			CHECK(fc.read(f, t) == 0);
		CHECK(fc.kept() <= FileCache::kMaxKept);
		std::vector<int> held;
		for (int i = 0; i < 20; i++)
			held.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
		FileCache crowded;
		CHECK(crowded.read("/proc/loadavg", t) == 0 && crowded.kept() == 0);
		for (int fd : held)
			close(fd);
	}
}

// The live host's tcp_retrans line of the scraper's own namespace: the inode stat() gives.
static void test_own_netns_live()
{
	struct stat st;
	if (stat("/proc/self/ns/net", &st) != 0)
		return;
	Scraper s("/proc", "/sys");
	auto ev = s.collect();
	bool found = false;
	for (const Event &e : ev)
		if (e.type == "tcp_retrans" && u(e, "netns") == (uint64_t)st.st_ino)
			found = true;
	CHECK(found);
	// Two collects: the kept files read again (no stale text).
	auto ev2 = s.collect();
	CHECK(u(find(ev2, "load"), "total_tasks").has_value() && u(find(ev2, "memory"), "mem_total_kb").has_value());
	CHECK(s.warnings().count() == 0);
	for (auto &w : s.warnings().list())
		fprintf(stderr, "unexpected warning: %s\n", w.c_str());
}

int main()
{
	test_fast_parsers_agree();
	test_dirents_and_proc_list();
	test_file_cache();
	test_own_netns_live();
	test_pure_parsers();
	test_fs_and_limits_parsers();
	test_cgroup_parsers();
	test_cgroup_v2_fixture();
	test_cgroup_v2_cpu_delta_ranks();
	test_cgroup_v1_fixture();
	test_cgroup_hostile_names();
	test_scraper_on_fixture();
	test_missing_field_and_file();
	test_short_block_stat();
	test_tcp_diag_live();
	TEST_MAIN_END();
}
