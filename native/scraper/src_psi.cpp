// SPDX-License-Identifier: MIT
// psi <- /proc/pressure/{cpu,memory,io}, one event per resource.
#include "sources.h"

namespace ks {

static std::optional<PsiLine> parse_psi_line(const std::vector<std::string_view> &w)
{
	// "some avg10=0.79 avg60=0.36 avg300=0.40 total=2645752"
	PsiLine p;
	int got = 0;
	for (size_t i = 1; i < w.size(); i++) {
		size_t eq = w[i].find('=');
		if (eq == std::string_view::npos)
			continue;
		auto k = w[i].substr(0, eq), v = w[i].substr(eq + 1);
		if (k == "avg10" && to_f64(v, p.avg10))
			got |= 1;
		else if (k == "avg60" && to_f64(v, p.avg60))
			got |= 2;
		else if (k == "avg300" && to_f64(v, p.avg300))
			got |= 4;
		else if (k == "total" && to_u64(v, p.total_us))
			got |= 8;
	}
	if (got != 15)
		return std::nullopt;
	return p;
}

Psi parse_psi(std::string_view text)
{
	Psi psi;
	for (auto line : split_lines(text)) {
		auto w = split_ws(line);
		if (w.empty())
			continue;
		if (w[0] == "some")
			psi.some = parse_psi_line(w);
		else if (w[0] == "full")
			psi.full = parse_psi_line(w);
	}
	return psi;
}

namespace {

const char *const kResources[] = {"cpu", "memory", "io"};

class PsiSource : public Source {
public:
	void collect(Ctx &c) override
	{
		for (int r = 0; r < 3; r++) {
			std::string path = c.proc_root + "/pressure/" + kResources[r], text;
			Psi p;
			// No PSI (CONFIG_PSI=n or psi=0): one warning, an all-null event.
			if (read_or_warn(c, path, text)) {
				p = parse_psi(text);
				if (!p.some)
					c.warn.warn(path, "some", "line \"some\" missing");
				// Kernels before 5.13 have no "full" line for cpu.
				if (!p.full)
					c.warn.warn(path, "full", "line \"full\" missing");
			}
			auto f = [](const std::optional<PsiLine> &l, double PsiLine::*m) {
				return l ? std::optional<double>((*l).*m) : std::nullopt;
			};
			auto total = [](const std::optional<PsiLine> &l) {
				return l ? std::optional<uint64_t>(l->total_us) : std::nullopt;
			};
			Event e("psi", c.ts_ns);
			e.str("resource", kResources[r]);
			e.f64("some_avg10", f(p.some, &PsiLine::avg10));
			e.f64("some_avg60", f(p.some, &PsiLine::avg60));
			e.f64("some_avg300", f(p.some, &PsiLine::avg300));
			e.u64("some_total_us", total(p.some));
			e.f64("full_avg10", f(p.full, &PsiLine::avg10));
			e.f64("full_avg60", f(p.full, &PsiLine::avg60));
			e.f64("full_avg300", f(p.full, &PsiLine::avg300));
			e.u64("full_total_us", total(p.full));
			c.out.push_back(std::move(e));
		}
	}
};

const RegisterSource kRegister("psi", make_source<PsiSource>);

} // namespace

} // namespace ks
