// SPDX-License-Identifier: MIT
// native/common: ks_json escaping and overflow, ks_out's FIFO contract.
#include "check.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
	// Group write is refused too: only the owner may use the FIFO.
	CHECK(chmod(loose.c_str(), 0620) == 0);
	CHECK(ks_out_open(&o, loose.c_str(), 100, err, sizeof(err)) == -1);
	CHECK(strstr(err, "0620") != nullptr && strstr(err, "chmod 600") != nullptr);

	std::string theirs = dir + "/theirs";
	CHECK(mkfifo(theirs.c_str(), 0600) == 0);
	if (geteuid() == 0 && chown(theirs.c_str(), 65534, 65534) == 0) {
		CHECK(ks_out_open(&o, theirs.c_str(), 100, err, sizeof(err)) == -1);
		CHECK(strstr(err, "owned by uid 65534") != nullptr);
	}
	rm_rf(dir);
}

// The counters file, read the way pipeline/kernelsight/accounting.py reads it.
struct CntFile {
	bool ok = false;
	uint32_t version = 0, pid = 0;
	uint64_t start_ticks = 0, created_ns = 0, in_progress = 0, updated_ns = 0, last_drop_ns = 0;
	std::string producer;
	uint64_t v[6] = {}; // lines_written, no_reader, full, oversize, write_errors, tool_lost
};

static uint64_t le64_at(const unsigned char *b, size_t off)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | b[off + (size_t)i];
	return v;
}

static CntFile read_cnt(const std::string &path)
{
	CntFile f;
	unsigned char b[KS_CNT_FILE_SIZE];
	int fd = open(path.c_str(), O_RDONLY);
	if (fd < 0)
		return f;
	ssize_t n = pread(fd, b, sizeof(b), 0);
	close(fd);
	if (n != (ssize_t)sizeof(b) || memcmp(b, "KSCOUNT\0", 8) != 0)
		return f;
	f.ok = true;
	f.version = (uint32_t)le64_at(b, 8);
	f.pid = (uint32_t)(le64_at(b, 8) >> 32);
	f.start_ticks = le64_at(b, 16);
	f.created_ns = le64_at(b, 24);
	f.producer = std::string((const char *)b + 32, strnlen((const char *)b + 32, 64));
	f.in_progress = le64_at(b, 96);
	f.updated_ns = le64_at(b, 104);
	f.last_drop_ns = le64_at(b, 112);
	for (int i = 0; i < 6; i++)
		f.v[i] = le64_at(b, 120 + 8 * (size_t)i);
	return f;
}

// True while some writer holds the file's flock (it is not final yet).
static bool cnt_held(const std::string &path)
{
	int fd = open(path.c_str(), O_RDONLY);
	if (fd < 0)
		return false;
	bool held = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
	close(fd);
	return held;
}

static void test_counters_file()
{
	std::string dir = make_tmpdir(), fifo = dir + "/fifo", data = dir + "/data";
	CHECK(mkdir(data.c_str(), 0700) == 0);
	CHECK(mkfifo(fifo.c_str(), 0600) == 0);
	int rfd = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
	CHECK(rfd >= 0);
	char err[256];
	struct ks_out o;

	// No KS_DATA_DIR: no file, same behaviour.
	unsetenv("KS_DATA_DIR");
	CHECK(ks_out_open_producer(&o, fifo.c_str(), 0, "ks-test", err, sizeof(err)) == 0);
	CHECK(o.cnt == nullptr);
	CHECK(ks_out_write_line(&o, "{}\n", 3) == 0 && o.c.lines_written == 1);
	ks_out_close(&o);

	setenv("KS_DATA_DIR", data.c_str(), 1);
	// A name that could leave the directory gets no file.
	CHECK(ks_out_open_producer(&o, fifo.c_str(), 0, "../evil", err, sizeof(err)) == 0);
	CHECK(o.cnt == nullptr);
	ks_out_close(&o);
	// stdout mode never makes one.
	CHECK(ks_out_open_producer(&o, "-", 0, "ks-test", err, sizeof(err)) == 0 && o.cnt == nullptr);

	CHECK(ks_out_open_producer(&o, fifo.c_str(), 0, "ks-test", err, sizeof(err)) == 0);
	CHECK(o.cnt != nullptr);
	std::string path = data + "/run/producers/ks-test." + std::to_string(getpid()) + ".cnt";
	CHECK(std::string(o.cnt_path) == path);
	struct stat st;
	CHECK(stat(path.c_str(), &st) == 0 && (st.st_mode & 07777) == 0600 && st.st_size == KS_CNT_FILE_SIZE);
	CHECK(stat((data + "/run").c_str(), &st) == 0 && (st.st_mode & 07777) == 0700);
	CHECK(stat((data + "/run/producers").c_str(), &st) == 0 && (st.st_mode & 07777) == 0700);
	for (int i = 0; i < 5; i++)
		CHECK(ks_out_write_line(&o, "{}\n", 3) == 0);
	CHECK(ks_out_write_line(&o, "no newline", 10) == -1);
	ks_out_count_tool_lost(&o, 7);
	CntFile f = read_cnt(path);
	CHECK(f.ok && f.version == KS_CNT_VERSION && f.pid == (uint32_t)getpid() && f.producer == "ks-test");
	CHECK(f.start_ticks > 0 && f.created_ns > 0 && f.updated_ns >= f.created_ns && f.last_drop_ns > 0);
	CHECK(f.in_progress == 0);
	CHECK(f.v[0] == 5 && f.v[3] == 1 && f.v[5] == 7 && f.v[1] == 0 && f.v[2] == 0 && f.v[4] == 0);
	CHECK(cnt_held(path));

	// A second writer in this process gets a file of its own.
	struct ks_out o2;
	CHECK(ks_out_open_producer(&o2, fifo.c_str(), 0, "ks-test", err, sizeof(err)) == 0);
	CHECK(o2.cnt != nullptr && std::string(o2.cnt_path) != path);
	CHECK(ks_out_write_line(&o2, "{}\n", 3) == 0);
	CHECK(read_cnt(o2.cnt_path).v[0] == 1 && read_cnt(path).v[0] == 5);
	std::string path2 = o2.cnt_path;
	ks_out_close(&o2);
	CHECK(!cnt_held(path2) && read_cnt(path2).v[0] == 1);

	// Closing keeps the file, final and unlocked.
	ks_out_close(&o);
	CHECK(!cnt_held(path));
	CHECK(read_cnt(path).v[0] == 5);

	// kill -9 after writing: the page cache keeps the counts.
	pid_t child = fork();
	if (child == 0) {
		struct ks_out c;
		char e[256];
		if (ks_out_open_producer(&c, fifo.c_str(), 0, "ks-child", e, sizeof(e)) != 0)
			_exit(3);
		for (int i = 0; i < 3; i++)
			ks_out_write_line(&c, "{}\n", 3);
		raise(SIGKILL);
		_exit(4);
	}
	int status = 0;
	CHECK(waitpid(child, &status, 0) == child && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	std::string cpath = data + "/run/producers/ks-child." + std::to_string(child) + ".cnt";
	CntFile cf = read_cnt(cpath);
	CHECK(cf.ok && cf.pid == (uint32_t)child && cf.v[0] == 3 && cf.in_progress == 0);
	CHECK(!cnt_held(cpath));

	char buf[4096];
	size_t got = 0;
	ssize_t n;
	while ((n = read(rfd, buf, sizeof(buf))) > 0)
		got += (size_t)n;
	CHECK(got == 3 * (1 + 5 + 1 + 3)); // every counted line is in the pipe, and no other
	close(rfd);
	unsetenv("KS_DATA_DIR");
	rm_rf(dir);
}

static void test_json_counters()
{
	struct ks_out o;
	char err[256];
	CHECK(ks_out_open(&o, "-", 0, err, sizeof(err)) == 0);
	o.c.lines_written = 1;
	o.c.dropped_tool_lost = 6;
	struct ks_json j;
	ks_json_begin(&j, "producer_stats", 5);
	ks_out_json_counters(&o, &j);
	CHECK(ks_json_end(&j) == 0);
	CHECK(line_of(j) == "{\"type\":\"producer_stats\",\"ts\":5,\"lines_written_total\":1,"
			    "\"dropped_no_reader_total\":0,\"dropped_full_total\":0,\"dropped_oversize_total\":0,"
			    "\"write_errors_total\":0,\"dropped_tool_lost_total\":6}\n");
}

int main()
{
	test_json_escaping();
	test_json_overflow();
	test_out_refuses_oversize();
	test_fifo_no_reader();
	test_fifo_refusals();
	test_counters_file();
	test_json_counters();
	TEST_MAIN_END();
}
