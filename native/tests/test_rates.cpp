// SPDX-License-Identifier: MIT
// The per-interval values the scraper still derives (cpu shares, cpu
// ctxt_per_sec, block util_pct): hand-computed over the two recorded
// snapshots, counter reset -> null, devices appearing and disappearing.
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

static void test_counter_rate()
{
	CHECK_NEAR(*counter_rate(10, 30, 2.0), 10.0, 0);
	CHECK(*counter_delta(7, 7) == 0);
	// Went backwards (reset or wrap): the delta is unknown, never ~2^64.
	CHECK(!counter_delta(30, 10) && !counter_rate(30, 10, 1.0));
	CHECK(!counter_rate(std::nullopt, 10, 1.0) && !counter_rate(10, std::nullopt, 1.0));
	// NaN (first read) or no elapsed time: no rate.
	CHECK(!counter_rate(10, 30, NAN) && !counter_rate(10, 30, 0.0));
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

	const Event *vda = find(ev, "block", "device", "vda");
	CHECK_NEAR(f(vda, "util_pct"), (4484.0 - 3428) / 2000 * 100, 1e-9);
	const Event *zram = find(ev, "block", "device", "zram0");
	CHECK_NEAR(f(zram, "util_pct"), 0.0, 0);
}

static void test_counter_reset()
{
	std::string root = make_tmpdir();
	Scraper s(root + "/proc", root + "/sys");
	auto at = [&](int sec) { return s.collect_at(kT0 + sec * kSec, kT0 + sec * kSec); };

	// /proc/stat going backwards (e.g. a replayed or restored tree): all
	// shares null, ctxt (still growing) keeps its rate.
	write_text(root + "/proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n"
					"intr 50\nctxt 1000\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n");
	at(0);
	write_text(root + "/proc/stat", "cpu  50 0 150 900 0 0 0 0 0 0\ncpu0 50 0 150 900 0 0 0 0 0 0\n"
					"intr 40\nctxt 2000\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n");
	auto ev = at(1);
	const Event *cpu = find(ev, "cpu");
	CHECK(is_null(cpu, "user_pct") && is_null(cpu, "idle_pct") && is_null(cpu, "system_pct"));
	CHECK_NEAR(f(cpu, "ctxt_per_sec"), 1000.0, 1e-9);
	// ctxt reset: null, and the next interval counts from the new value.
	write_text(root + "/proc/stat", "cpu  60 0 150 990 0 0 0 0 0 0\ncpu0 60 0 150 990 0 0 0 0 0 0\n"
					"intr 40\nctxt 500\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n");
	ev = at(2);
	cpu = find(ev, "cpu");
	CHECK(is_null(cpu, "ctxt_per_sec"));
	CHECK_NEAR(f(cpu, "user_pct"), 10.0, 1e-9);
	CHECK_NEAR(f(cpu, "idle_pct"), 90.0, 1e-9);
	write_text(root + "/proc/stat", "cpu  60 0 150 990 0 0 0 0 0 0\ncpu0 60 0 150 990 0 0 0 0 0 0\n"
					"intr 40\nctxt 800\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n");
	ev = at(4);
	CHECK_NEAR(f(find(ev, "cpu"), "ctxt_per_sec"), 150.0, 1e-9);
	CHECK(is_null(find(ev, "cpu"), "user_pct")); // no jiffy passed: no shares

	// io_ticks going backwards (device re-created under the same name): null.
	write_text(root + "/sys/block/sda/stat", "1 0 8 1 1 0 8 1 0 5000 1\n");
	at(5);
	write_text(root + "/sys/block/sda/stat", "1 0 8 1 1 0 8 1 0 10 1\n");
	ev = at(6);
	CHECK(is_null(find(ev, "block", "device", "sda"), "util_pct"));
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
	at(0);

	// sdb vanishes: not emitted.
	rm_rf(root + "/sys/block/sdb");
	write_text(root + "/sys/block/sda/stat", "11 0 88 11 1 0 8 1 0 501 1001\n");
	auto ev = at(1);
	CHECK(!find(ev, "block", "device", "sdb"));
	const Event *sda = find(ev, "block", "device", "sda");
	CHECK_NEAR(f(sda, "util_pct"), 50.0, 1e-9);

	// It comes back with larger counters: first sighting again, util_pct
	// null, not a share against the state from two reads ago.
	write_text(root + "/sys/block/sdb/stat", "9 0 72 9 1 0 8 1 0 9 9\n");
	ev = at(2);
	const Event *sdb = find(ev, "block", "device", "sdb");
	CHECK(sdb && is_null(sdb, "util_pct"));
	CHECK(sdb && sdb->find("reads_completed_total")->u == 9);
	CHECK_NEAR(f(find(ev, "block", "device", "sda"), "util_pct"), 0.0, 0);
	// util_pct is capped at 100: io_ticks can run slightly ahead of the wall clock.
	write_text(root + "/sys/block/sda/stat", "11 0 88 11 1 0 8 1 0 2000 1001\n");
	ev = at(3);
	CHECK_NEAR(f(find(ev, "block", "device", "sda"), "util_pct"), 100.0, 0);
	rm_rf(root);
}

static void test_clock_not_advancing()
{
	Scraper s(kFix + "/proc_tree/proc", kFix + "/proc_tree/sys");
	s.collect_at(kT0, kT0);
	auto ev = s.collect_at(kT0, kT0); // same clock: no elapsed time, no rates
	CHECK(is_null(find(ev, "cpu"), "ctxt_per_sec") && is_null(find(ev, "cpu"), "user_pct"));
	CHECK(is_null(find(ev, "block", "device", "vda"), "util_pct"));
}

int main()
{
	test_counter_rate();
	test_fixture_rates();
	test_counter_reset();
	test_devices_come_and_go();
	test_clock_not_advancing();
	TEST_MAIN_END();
}
