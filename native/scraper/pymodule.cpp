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
		// Bytes as the JSON line writes them (each byte outside printable
		// ASCII as \u00XX): Latin-1, so a non-UTF-8 name reads the same
		// from the dict and from the line, and never fails to decode.
		case ks::Field::Str:
			d[f.key] = py::reinterpret_steal<py::str>(
				PyUnicode_DecodeLatin1(f.s.data(), (Py_ssize_t)f.s.size(), nullptr));
			break;
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
		.def(py::init([](const py::object &proc_root, const py::object &sys_root, size_t cgroups_max) {
			     auto *s = new ks::Scraper(fspath(proc_root), fspath(sys_root));
			     s->options().cgroups_max = cgroups_max;
			     return s;
		     }),
		     py::arg("proc_root") = "/proc", py::arg("sys_root") = "/sys", py::arg("cgroups_max") = 64)
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
			[](ks::Scraper &s, const py::object &p) { s.set_sys_root(fspath(p)); })
		.def_property(
			"cgroups_max", [](ks::Scraper &s) { return s.options().cgroups_max; },
			[](ks::Scraper &s, size_t n) { s.options().cgroups_max = n; },
			"cgroup lines per read (default 64).");
}
