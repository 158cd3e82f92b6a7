// SPDX-License-Identifier: MIT
//
// kernelsight._scraper: the same Scraper core as ks-scraper, as Python objects.
#include "ks_scraper.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace {

// Accept str and os.PathLike.
std::string fspath(const py::object &p)
{
	return py::module_::import("os").attr("fspath")(p).cast<std::string>();
}

py::dict to_dict(const ks::Event &e)
{
	py::dict d;
	d["type"] = e.type;
	d["ts"] = e.ts_ns;
	for (const ks::Field &f : e.fields) {
		switch (f.kind) {
		case ks::Field::Null: d[f.key] = py::none(); break;
		case ks::Field::U64: d[f.key] = f.u; break;
		case ks::Field::I64: d[f.key] = f.i; break;
		case ks::Field::F64: d[f.key] = f.f; break;
		case ks::Field::Str: d[f.key] = f.s; break;
		}
	}
	return d;
}

std::vector<ks::Event> run(ks::Scraper &s, const py::object &now_ns)
{
	if (now_ns.is_none())
		return s.collect();
	uint64_t t = now_ns.cast<uint64_t>();
	return s.collect_at(t, t);
}

} // namespace

PYBIND11_MODULE(_scraper, m)
{
	m.doc() = "The /proc + /sys scraper core shared with the ks-scraper binary.";
	// Not thread-safe: the GIL stays held during collect (a read takes ~1 ms).
	py::class_<ks::Scraper>(m, "Scraper")
		.def(py::init([](const py::object &proc_root, const py::object &sys_root) {
			     return new ks::Scraper(fspath(proc_root), fspath(sys_root));
		     }),
		     py::arg("proc_root") = "/proc", py::arg("sys_root") = "/sys")
		.def(
			"collect",
			[](ks::Scraper &s, const py::object &now_ns) {
				py::list out;
				for (const ks::Event &e : run(s, now_ns))
					out.append(to_dict(e));
				return out;
			},
			py::arg("now_ns") = py::none(),
			"Read every source once; one dict per event (None for null).\n"
			"now_ns (tests, replay) stamps the events and is the clock for rates;\n"
			"by default ts is CLOCK_REALTIME and rates use CLOCK_MONOTONIC.")
		.def(
			"collect_json",
			[](ks::Scraper &s, const py::object &now_ns) {
				py::list out;
				for (const ks::Event &e : run(s, now_ns)) {
					std::string line = ks::event_to_line(e);
					if (!line.empty()) // ks-scraper drops (and counts) such a line too
						out.append(py::str(line));
				}
				return out;
			},
			py::arg("now_ns") = py::none(),
			"Like collect(), as the JSON lines ks-scraper writes (ending in newline).")
		.def_property_readonly("warnings",
				       [](ks::Scraper &s) { return s.warnings().list(); },
				       "Warnings so far, one per (file, field).")
		.def_property(
			"proc_root", [](ks::Scraper &s) { return s.proc_root(); },
			[](ks::Scraper &s, const py::object &p) { s.set_proc_root(fspath(p)); })
		.def_property(
			"sys_root", [](ks::Scraper &s) { return s.sys_root(); },
			[](ks::Scraper &s, const py::object &p) { s.set_sys_root(fspath(p)); });
}
