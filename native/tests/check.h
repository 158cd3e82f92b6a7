// SPDX-License-Identifier: MIT
// A tiny assert-style harness: CHECK keeps going, main returns the failures.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

static int g_failures = 0;

#define CHECK(cond)                                                                   \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			g_failures++;                                                 \
		}                                                                     \
	} while (0)

#define CHECK_NEAR(a, b, tol)                                                          \
	do {                                                                           \
		double _a = (a), _b = (b);                                             \
		if (!(std::fabs(_a - _b) <= (tol))) {                                  \
			fprintf(stderr, "%s:%d: %s = %.9g, want %.9g\n", __FILE__, __LINE__, #a, _a, _b); \
			g_failures++;                                                  \
		}                                                                      \
	} while (0)

#define TEST_MAIN_END()                                                                \
	do {                                                                           \
		if (g_failures)                                                        \
			fprintf(stderr, "%d check(s) failed\n", g_failures);           \
		else                                                                   \
			fprintf(stderr, "all checks passed\n");                        \
		return g_failures ? 1 : 0;                                             \
	} while (0)

static inline std::string slurp(const std::string &path)
{
	std::ifstream f(path);
	std::stringstream ss;
	ss << f.rdbuf();
	return ss.str();
}

static inline void write_text(const std::string &path, const std::string &text)
{
	// mkdir -p of the parent
	for (size_t i = 1; i < path.size(); i++)
		if (path[i] == '/')
			mkdir(path.substr(0, i).c_str(), 0755);
	std::ofstream(path) << text;
}

// A fresh directory under $TMPDIR, removed with rm_rf().
static inline std::string make_tmpdir()
{
	const char *base = getenv("TMPDIR");
	std::string tmpl = std::string(base ? base : "/tmp") + "/ks_test.XXXXXX";
	if (!mkdtemp(&tmpl[0])) {
		perror("mkdtemp");
		exit(2);
	}
	return tmpl;
}

static inline void rm_rf(const std::string &dir)
{
	std::string cmd = "rm -rf '" + dir + "'";
	if (system(cmd.c_str()) != 0)
		fprintf(stderr, "cleanup of %s failed\n", dir.c_str());
}
