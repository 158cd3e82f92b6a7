// SPDX-License-Identifier: MIT
// Rates: hand-computed over the two recorded snapshots, counter reset and
// 32-bit wrap -> null, devices appearing and disappearing.
#include "check.h"
#include "sources.h"

using namespace ks;

static const std::string kFix = KS_FIXTURES;
static const uint64_t kT0 = 1795289985000000000ULL, kSec = 1000000000ULL;

static const Event *find(const std::vector<Event> &ev, const std::string &type,
			 const char *key = nullptr, const std::string &name = "")
{
	for (auto &e : ev) {
		if (e.type != type)
			continue;
		if (!key || e.find(key)->s == name)
			return &e;
	}
	return nullptr;
}

static double f(const Event *e, const char *k)
{
	if (!e)
		return NAN;
	const Field *x = e->find(k);
	return x && x->kind == Field::F64 ? x->f : NAN;
}

static bool is_null(const Event *e, const char *k)
{
	const Field *x = e ? e->find(k) : nullptr;
	return x && x->kind == Field::Null;
}

static void test_fixture_rates()
{
	// Two snapshots, 2 s apart on the clock we hand in.
	Scraper s(kFix + "/proc_tree/proc", kFix + "/proc_tree/sys");
	s.collect_at(kT0, kT0);
	s.set_proc_root(kFix + "/proc_tree_t1/proc");
	s.set_sys_root(kFix + "/proc_tree_t1/sys");
	auto ev = s.collect_at(kT0 + 2 * kSec, kT0 + 2 * kSec);
	CHECK(s.warnings().count() == 0);

	// cpu line deltas: user 326 nice 0 system 64 idle 14 iowait 3 irq 0 softirq 21 steal 1 = 429
	const Event *cpu = find(ev, "cpu");
	CHECK_NEAR(f(cpu, "user_pct"), 100.0 * 326 / 429, 1e-9);
	CHECK_NEAR(f(cpu, "system_pct"), 100.0 * 64 / 429, 1e-9);
	CHECK_NEAR(f(cpu, "idle_pct"), 100.0 * 14 / 429, 1e-9);
	CHECK_NEAR(f(cpu, "steal_pct"), 100.0 * 1 / 429, 1e-9);
	CHECK_NEAR(f(cpu, "nice_pct"), 0.0, 0);
	CHECK_NEAR(f(cpu, "ctxt_per_sec"), (354793.0 - 305957) / 2, 1e-9);
	CHECK_NEAR(f(cpu, "forks_per_sec"), (5417.0 - 5336) / 2, 1e-9);
	CHECK_NEAR(f(cpu, "intr_per_sec"), (152917.0 - 126628) / 2, 1e-9);

	const Event *vm = find(ev, "vmstat");
	CHECK_NEAR(f(vm, "pgfault_per_sec"), (1710656.0 - 1690534) / 2, 1e-9);
	CHECK_NEAR(f(vm, "pgmajfault_per_sec"), 10.0, 1e-9);
	CHECK(vm && vm->find("oom_kill_delta")->kind == Field::U64 && vm->find("oom_kill_delta")->u == 0);

	const Event *vda = find(ev, "block", "device", "vda");
	CHECK_NEAR(f(vda, "read_iops"), (53954.0 - 30026) / 2, 1e-9);
	CHECK_NEAR(f(vda, "write_iops"), 5.5, 1e-9);
	CHECK_NEAR(f(vda, "read_bytes_per_sec"), (3299842.0 - 2662010) * 512 / 2, 1e-6);
	CHECK_NEAR(f(vda, "write_bytes_per_sec"), (1444728.0 - 1379176) * 512 / 2, 1e-6);
	CHECK_NEAR(f(vda, "read_await_ms"), (6612.0 - 5537) / (53954 - 30026), 1e-12);
	CHECK_NEAR(f(vda, "write_await_ms"), 71.0 / 11, 1e-12);
	CHECK_NEAR(f(vda, "util_pct"), (4484.0 - 3428) / 2000 * 100, 1e-9);
	CHECK_NEAR(f(vda, "avg_queue_depth"), (8979.0 - 7830) / 2000, 1e-12);
	const Event *zram = find(ev, "block", "device", "zram0");
	CHECK(is_null(zram, "read_await_ms") && f(zram, "read_iops") == 0.0);

	const Event *lo = find(ev, "net_dev", "interface", "lo");
	CHECK_NEAR(f(lo, "rx_bytes_per_sec"), (12881.0 - 9615) / 2, 1e-9);
	CHECK_NEAR(f(lo, "tx_packets_per_sec"), 12.0, 1e-9);

	const Event *tr = find(ev, "tcp_retrans");
	CHECK_NEAR(f(tr, "out_segs_per_sec"), 12.0, 1e-9);
	CHECK_NEAR(f(tr, "retransmit_pct"), 0.0, 0);
	CHECK_NEAR(f(tr, "active_opens_per_sec"), 1.0, 1e-9);

	const Event *psi_cpu = find(ev, "psi", "resource", "cpu");
	CHECK_NEAR(f(psi_cpu, "some_stall_us_per_sec"), (5420133.0 - 3787840) / 2, 1e-9);
	CHECK_NEAR(f(psi_cpu, "full_stall_us_per_sec"), 0.0, 0);
}

static std::string net_dev(const char *eth0, const char *eth1 = nullptr)
{
	std::string s = "Inter-|   Receive                                                |  Transmit\n"
			" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";
	s += std::string("  eth0: ") + eth0 + "\n";
	if (eth1)
		s += std::string("  eth1: ") + eth1 + "\n";
	return s;
}

static void test_counter_reset_and_wrap()
{
	std::string root = make_tmpdir();
	Scraper s(root + "/proc", root + "/sys");
	auto at = [&](int sec) { return s.collect_at(kT0 + sec * kSec, kT0 + sec * kSec); };

	write_text(root + "/proc/net/dev", net_dev("4294967000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0"));
	at(0);
	// rx_bytes wraps at 2^32 (a 32-bit driver counter), tx grows normally.
	write_text(root + "/proc/net/dev", net_dev("100 20 0 0 0 0 0 0 3000 20 0 0 0 0 0 0"));
	auto ev = at(1);
	const Event *eth0 = find(ev, "net_dev", "interface", "eth0");
	CHECK(is_null(eth0, "rx_bytes_per_sec"));
	CHECK_NEAR(f(eth0, "rx_packets_per_sec"), 10.0, 1e-9);
	CHECK_NEAR(f(eth0, "tx_bytes_per_sec"), 2000.0, 1e-9);
	// Next interval rates come back, from the post-wrap value.
	write_text(root + "/proc/net/dev", net_dev("600 20 0 0 0 0 0 0 3000 20 0 0 0 0 0 0"));
	ev = at(3);
	eth0 = find(ev, "net_dev", "interface", "eth0");
	CHECK_NEAR(f(eth0, "rx_bytes_per_sec"), 250.0, 1e-9);

	// /proc/stat going backwards (e.g. a replayed or restored tree): all shares null.
	write_text(root + "/proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n"
					"intr 50\nctxt 1000\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n");
	at(4);
	write_text(root + "/proc/stat", "cpu  50 0 150 900 0 0 0 0 0 0\ncpu0 50 0 150 900 0 0 0 0 0 0\n"
					"intr 40\nctxt 2000\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n");
	ev = at(5);
	const Event *cpu = find(ev, "cpu");
	CHECK(is_null(cpu, "user_pct") && is_null(cpu, "idle_pct") && is_null(cpu, "system_pct"));
	CHECK(is_null(cpu, "intr_per_sec"));
	CHECK_NEAR(f(cpu, "ctxt_per_sec"), 1000.0, 1e-9);

	// vmstat oom_kill reset: delta null, never a huge number.
	write_text(root + "/proc/vmstat", "oom_kill 5\npgfault 10\n");
	at(6);
	write_text(root + "/proc/vmstat", "oom_kill 1\npgfault 20\n");
	ev = at(7);
	const Event *vm = find(ev, "vmstat");
	CHECK(is_null(vm, "oom_kill_delta"));
	CHECK_NEAR(f(vm, "pgfault_per_sec"), 10.0, 1e-9);
	rm_rf(root);
}

static void test_devices_come_and_go()
{
	std::string root = make_tmpdir();
	Scraper s(root + "/proc", root + "/sys");
	auto at = [&](int sec) { return s.collect_at(kT0 + sec * kSec, kT0 + sec * kSec); };
	const char *row = "1 0 8 1 1 0 8 1 0 1 1\n";
	write_text(root + "/sys/block/sda/stat", row);
	write_text(root + "/sys/block/sdb/stat", row);
	write_text(root + "/proc/net/dev", net_dev("0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0",
						   "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"));
	at(0);

	// sdb and eth1 vanish: not emitted.
	rm_rf(root + "/sys/block/sdb");
	write_text(root + "/sys/block/sda/stat", "11 0 88 11 1 0 8 1 0 501 1001\n");
	write_text(root + "/proc/net/dev", net_dev("100 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0"));
	auto ev = at(1);
	CHECK(!find(ev, "block", "device", "sdb") && !find(ev, "net_dev", "interface", "eth1"));
	const Event *sda = find(ev, "block", "device", "sda");
	CHECK_NEAR(f(sda, "read_iops"), 10.0, 1e-9);
	CHECK_NEAR(f(sda, "read_bytes_per_sec"), 80.0 * 512, 1e-9);
	CHECK_NEAR(f(sda, "read_await_ms"), 1.0, 1e-9);
	CHECK(is_null(sda, "write_await_ms")); // no writes completed in the interval
	CHECK_NEAR(f(sda, "util_pct"), 50.0, 1e-9);
	CHECK_NEAR(f(sda, "avg_queue_depth"), 1.0, 1e-9);

	// They come back with larger counters: first sighting again, null rates,
	// not a rate against the state from two reads ago.
	write_text(root + "/sys/block/sdb/stat", "9 0 72 9 1 0 8 1 0 9 9\n");
	write_text(root + "/proc/net/dev", net_dev("100 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0",
						   "500 5 0 0 0 0 0 0 0 0 0 0 0 0 0 0"));
	ev = at(2);
	const Event *sdb = find(ev, "block", "device", "sdb");
	CHECK(sdb && is_null(sdb, "read_iops") && is_null(sdb, "util_pct"));
	CHECK(sdb && sdb->find("reads_completed_total")->u == 9);
	const Event *eth1 = find(ev, "net_dev", "interface", "eth1");
	CHECK(eth1 && is_null(eth1, "rx_bytes_per_sec"));
	CHECK_NEAR(f(find(ev, "block", "device", "sda"), "read_iops"), 0.0, 0);
	// util_pct is capped at 100: io_ticks can run slightly ahead of the wall clock.
	write_text(root + "/sys/block/sda/stat", "11 0 88 11 1 0 8 1 0 2000 1001\n");
	ev = at(3);
	CHECK_NEAR(f(find(ev, "block", "device", "sda"), "util_pct"), 100.0, 0);
	CHECK(s.warnings().count() == s.warnings().list().size());
	rm_rf(root);
}

static void test_clock_not_advancing()
{
	Scraper s(kFix + "/proc_tree/proc", kFix + "/proc_tree/sys");
	s.collect_at(kT0, kT0);
	auto ev = s.collect_at(kT0, kT0); // same clock: no elapsed time, no rates
	CHECK(is_null(find(ev, "cpu"), "ctxt_per_sec") && is_null(find(ev, "cpu"), "user_pct"));
	CHECK(is_null(find(ev, "vmstat"), "oom_kill_delta"));
}

int main()
{
	test_fixture_rates();
	test_counter_reset_and_wrap();
	test_devices_come_and_go();
	test_clock_not_advancing();
	TEST_MAIN_END();
}
