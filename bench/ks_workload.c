// SPDX-License-Identifier: MIT
/*
 * ks_workload: deterministic workloads for the tracer tests and benchmarks.
 * Compiled at run time by tests/test_tracers.py and pipeline/bench/tracers.py
 * (cc -O2 -o ks_workload bench/ks_workload.c); not part of the CMake build.
 *
 *   ks_workload [-w] getppid N        N getppid() syscalls
 *   ks_workload [-w] nanosleep MS     one nanosleep of MS milliseconds
 *   ks_workload [-w] touch M          touch M fresh pages of an anonymous mmap (THP off)
 *   ks_workload [-w] pingpong K       K round trips over two pipes with a forked child;
 *                                     the child waits 50 us before each reply so the
 *                                     parent (this pid) blocks on every read
 *   ks_workload [-w] odirect PATH N   N O_DIRECT 4 KiB reads at spread offsets of PATH
 *   ks_workload [-w] rate R SEC       about R getppid()/s for SEC seconds: every 1 ms
 *                                     (clock_nanosleep TIMER_ABSTIME) issue the calls
 *                                     due so far; prints "done <ns> <calls>"
 *
 * -w: print "ready <pid>" and wait for a line on stdin before working.
 * Always prints "done <elapsed_ns>" at the end.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static int usage(void)
{
	fprintf(stderr, "usage: ks_workload [-w] getppid N | nanosleep MS | touch M | pingpong K | odirect PATH N | rate R SEC\n");
	return 2;
}

int main(int argc, char **argv)
{
	int ai = 1;
	uint64_t t0;

	if (argc > 1 && strcmp(argv[1], "-w") == 0) {
		char line[64];

		ai++;
		printf("ready %d\n", getpid());
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin))
			return 1;
	}
	if (argc < ai + 2)
		return usage();
	t0 = now_ns();
	if (strcmp(argv[ai], "getppid") == 0) {
		long n = atol(argv[ai + 1]);

		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
	} else if (strcmp(argv[ai], "nanosleep") == 0) {
		long ms = atol(argv[ai + 1]);
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
	} else if (strcmp(argv[ai], "touch") == 0) {
		long m = atol(argv[ai + 1]), pg = sysconf(_SC_PAGESIZE);
		volatile char *p = mmap(NULL, m * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return 1;
		madvise((void *)p, m * pg, MADV_NOHUGEPAGE);
		for (long i = 0; i < m; i++)
			p[i * pg] = 1;
	} else if (strcmp(argv[ai], "pingpong") == 0) {
		long k = atol(argv[ai + 1]);
		int a[2], b[2];
		char c = 'x';
		pid_t ch;

		if (pipe(a) || pipe(b))
			return 1;
		ch = fork();
		if (ch == 0) {
			struct timespec d = { 0, 50000 };

			for (long i = 0; i < k; i++) {
				nanosleep(&d, NULL);
				if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
					_exit(1);
			}
			_exit(0);
		}
		for (long i = 0; i < k; i++) {
			if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
				return 1;
		}
		waitpid(ch, NULL, 0);
	} else if (strcmp(argv[ai], "odirect") == 0) {
		long n;
		int fd;
		void *buf;
		struct stat st;

		if (argc < ai + 3)
			return usage();
		n = atol(argv[ai + 2]);
		fd = open(argv[ai + 1], O_RDONLY | O_DIRECT);
		if (fd < 0 || fstat(fd, &st) || posix_memalign(&buf, 4096, 4096))
			return 1;
		for (long i = 0; i < n; i++) {
			off_t blocks = st.st_size / 4096;
			off_t off = (off_t)((i * 7919) % (blocks ? blocks : 1)) * 4096;

			if (pread(fd, buf, 4096, off) != 4096)
				return 1;
		}
	} else if (strcmp(argv[ai], "rate") == 0) {
		double rate, sec;
		uint64_t end, issued = 0;
		struct timespec next;

		if (argc < ai + 3)
			return usage();
		rate = atof(argv[ai + 1]);
		sec = atof(argv[ai + 2]);
		end = t0 + (uint64_t)(sec * 1e9);
		clock_gettime(CLOCK_MONOTONIC, &next);
		for (;;) {
			uint64_t now = now_ns(), due;

			if (now >= end)
				now = end;
			due = (uint64_t)((double)(now - t0) * rate / 1e9);
			while (issued < due) {
				syscall(SYS_getppid);
				issued++;
			}
			if (now >= end)
				break;
			next.tv_nsec += 1000000;
			if (next.tv_nsec >= 1000000000L) {
				next.tv_nsec -= 1000000000L;
				next.tv_sec++;
			}
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		}
		printf("done %llu %llu\n", (unsigned long long)(now_ns() - t0), (unsigned long long)issued);
		return 0;
	} else {
		return usage();
	}
	printf("done %llu\n", (unsigned long long)(now_ns() - t0));
	return 0;
}
