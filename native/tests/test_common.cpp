// SPDX-License-Identifier: MIT
// native/common: ks_json escaping and overflow, ks_out's FIFO contract.
#include "check.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

#include "ks_json.h"
#include "ks_out.h"

static std::string line_of(struct ks_json &j) { return std::string(j.buf, j.len); }

static void test_json_escaping()
{
	struct ks_json j;
	ks_json_begin(&j, "t", 42);
	ks_json_str(&j, "s", "a\"b\\c\nd\te\x01\x7f\xff");
	ks_json_f64(&j, "nan", NAN);
	ks_json_f64(&j, "inf", INFINITY);
	ks_json_f64(&j, "x", 0.1);
	ks_json_i64(&j, "neg", -5);
	ks_json_null(&j, "n");
	CHECK(ks_json_end(&j) == 0);
	CHECK(line_of(j) == "{\"type\":\"t\",\"ts\":42,\"s\":\"a\\\"b\\\\c\\nd\\te\\u0001\\u007f\\u00ff\","
			    "\"nan\":null,\"inf\":null,\"x\":0.1,\"neg\":-5,\"n\":null}\n");
}

static void test_json_overflow()
{
	struct ks_json j;
	std::string big(5000, 'x');
	ks_json_begin(&j, "t", 1);
	ks_json_str(&j, "big", big.c_str());
	ks_json_u64(&j, "after", 1); // sticky: still refused
	CHECK(ks_json_end(&j) == -1);

	// The largest line that fits is exactly KS_LINE_MAX bytes with its '\n'.
	const std::string head = "{\"type\":\"t\",\"ts\":1,\"s\":\"";
	const size_t fill = KS_LINE_MAX - head.size() - 3; // closing quote, '}', '\n'
	ks_json_begin(&j, "t", 1);
	ks_json_str(&j, "s", std::string(fill, 'y').c_str());
	CHECK(ks_json_end(&j) == 0);
	CHECK(j.len == KS_LINE_MAX && j.buf[j.len - 1] == '\n');
	ks_json_begin(&j, "t", 1);
	ks_json_str(&j, "s", std::string(fill + 1, 'y').c_str());
	CHECK(ks_json_end(&j) == -1);
	// An escape that would straddle the limit is refused, not cut.
	ks_json_begin(&j, "t", 1);
	ks_json_str(&j, "s", (std::string(fill - 1, 'y') + "\x01").c_str());
	CHECK(ks_json_end(&j) == -1);
}

static void test_out_refuses_oversize()
{
	struct ks_out o;
	char err[256];
	CHECK(ks_out_open(&o, "-", 100, err, sizeof(err)) == 0);
	std::string big(KS_LINE_MAX + 1, 'z');
	big.back() = '\n';
	CHECK(ks_out_write_line(&o, big.data(), big.size()) == -1);
	CHECK(ks_out_write_line(&o, "no newline", 10) == -1);
	CHECK(ks_out_write_line(&o, "", 0) == -1);
	CHECK(o.c.dropped_oversize == 3 && o.c.lines_written == 0);
}

static void test_fifo_no_reader()
{
	std::string dir = make_tmpdir(), path = dir + "/fifo";
	struct ks_out o;
	char err[256];
	CHECK(ks_out_open(&o, path.c_str(), 100, err, sizeof(err)) == 0);
	struct stat st;
	CHECK(lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode) && (st.st_mode & 077) == 0);
	uint64_t t0 = ks_now_mono_ns();
	for (int i = 0; i < 100; i++)
		CHECK(ks_out_write_line(&o, "{}\n", 3) == -1);
	uint64_t took_ms = (ks_now_mono_ns() - t0) / 1000000;
	CHECK(o.c.dropped_no_reader == 100 && o.c.lines_written == 0);
	CHECK(took_ms < 200); // never blocks waiting for a reader
	ks_out_close(&o);

	// With a reader there first, lines arrive whole.
	int rfd = open(path.c_str(), O_RDONLY | O_NONBLOCK);
	CHECK(rfd >= 0);
	CHECK(ks_out_open(&o, path.c_str(), 100, err, sizeof(err)) == 0);
	CHECK(ks_out_write_line(&o, "{\"a\":1}\n", 8) == 0);
	char buf[64];
	CHECK(read(rfd, buf, sizeof(buf)) == 8 && memcmp(buf, "{\"a\":1}\n", 8) == 0);

	// A reader that stops reading: the pipe fills, lines are dropped after
	// block_ms and counted, never half-written.
	o.block_ms = 1;
	std::string line(1000, 'x');
	line.back() = '\n';
	uint64_t full = 0;
	for (int i = 0; i < 200 && !full; i++) {
		ks_out_write_line(&o, line.data(), line.size());
		full = o.c.dropped_full;
	}
	CHECK(full == 1);
	size_t got = 0;
	ssize_t n;
	while ((n = read(rfd, buf, sizeof(buf))) > 0)
		got += (size_t)n;
	CHECK(got == (o.c.lines_written - 1) * line.size()); // whole lines only
	close(rfd);
	ks_out_close(&o);
	rm_rf(dir);
}

static void test_fifo_refusals()
{
	std::string dir = make_tmpdir();
	struct ks_out o;
	char err[256];

	std::string reg = dir + "/regular";
	write_text(reg, "data\n");
	CHECK(ks_out_open(&o, reg.c_str(), 100, err, sizeof(err)) == -1);
	CHECK(strstr(err, "not a FIFO") != nullptr);

	std::string target = dir + "/target", link = dir + "/link";
	CHECK(mkfifo(target.c_str(), 0600) == 0);
	CHECK(symlink(target.c_str(), link.c_str()) == 0);
	CHECK(ks_out_open(&o, link.c_str(), 100, err, sizeof(err)) == -1);
	CHECK(strstr(err, "symlink") != nullptr);

	std::string loose = dir + "/loose";
	CHECK(mkfifo(loose.c_str(), 0600) == 0 && chmod(loose.c_str(), 0666) == 0);
	CHECK(ks_out_open(&o, loose.c_str(), 100, err, sizeof(err)) == -1);
	CHECK(strstr(err, "open to others") != nullptr);

	std::string theirs = dir + "/theirs";
	CHECK(mkfifo(theirs.c_str(), 0600) == 0);
	if (geteuid() == 0 && chown(theirs.c_str(), 65534, 65534) == 0) {
		CHECK(ks_out_open(&o, theirs.c_str(), 100, err, sizeof(err)) == -1);
		CHECK(strstr(err, "owned by uid 65534") != nullptr);
	}
	rm_rf(dir);
}

int main()
{
	test_json_escaping();
	test_json_overflow();
	test_out_refuses_oversize();
	test_fifo_no_reader();
	test_fifo_refusals();
	TEST_MAIN_END();
}
