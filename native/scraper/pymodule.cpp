// SPDX-License-Identifier: MIT
//
// kernelsight._scraper: the same Scraper core as ks-scraper, as Python objects.
#include "ks_scraper.h"
#include "procs.h"

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

// ---- per-process reading for the agent's samplers (procs.h) ----

py::object steal(PyObject *o)
{
	if (o == nullptr)
		throw py::error_already_set();
	return py::reinterpret_steal<py::object>(o);
}

py::object u64(uint64_t v) { return steal(PyLong_FromUnsignedLongLong(v)); }

py::bytes bytes_of(const std::string &s) { return py::bytes(s.data(), s.size()); }

py::tuple read_procs(const py::object &proc_root, uint64_t page_kb, const py::object &sample,
		     const py::object &parse_sample, const py::object &parse_io)
{
	std::string root = fspath(proc_root);
	int err = 0;
	std::vector<ks::procs::ProcEntry> got;
	{
		py::gil_scoped_release unlocked;
		got = ks::procs::read_procs(root, page_kb, !sample.is_none(), !parse_io.is_none(), err);
	}
	if (err != 0) {
		errno = err;
		PyErr_SetFromErrnoWithFilename(PyExc_OSError, root.c_str());
		throw py::error_already_set();
	}
	// In directory order, as the Python loop fills its dicts: a pid met twice (names "7" and
	// "07") keeps its first place and its last value that parsed.
	py::dict procs, ios;
	for (const ks::procs::ProcEntry &e : got) {
		py::object pid = u64(e.pid);
		if (e.stat == ks::procs::Got::Parsed) {
			const ks::procs::ProcFields &f = e.f;
			// The same decoding as parse_proc_sample: a name need not be UTF-8.
			py::object comm = steal(PyUnicode_DecodeUTF8(f.comm.data(), (Py_ssize_t)f.comm.size(),
								      "backslashreplace"));
			py::object state = steal(PyUnicode_DecodeASCII(f.state.data(), (Py_ssize_t)f.state.size(), "replace"));
			procs[pid] = sample(comm, state, u64(f.rss_kb), u64(f.cpu_ticks), u64(f.minflt), u64(f.majflt),
					    u64(f.ctxt), u64(f.nonvol_ctxt), u64(f.start_ticks), u64(f.ppid), u64(f.threads));
		} else if (e.stat == ks::procs::Got::Raw) {
			py::object s = parse_sample(bytes_of(e.stat_raw), bytes_of(e.status_raw));
			if (!s.is_none())
				procs[pid] = s;
		}
		if (e.io == ks::procs::Got::Parsed) {
			ios[pid] = py::make_tuple(u64(e.wchar), u64(e.read_bytes), u64(e.write_bytes));
		} else if (e.io == ks::procs::Got::Raw) {
			py::object v = parse_io(bytes_of(e.io_raw));
			if (!v.is_none())
				ios[pid] = v;
		}
	}
	return py::make_tuple(procs, ios);
}

py::list ctxt_of_threads(const py::object &proc_root, const std::vector<uint64_t> &pids)
{
	std::string root = fspath(proc_root);
	std::vector<ks::procs::ThreadCtxt> got;
	{
		py::gil_scoped_release unlocked;
		got.reserve(pids.size());
		for (uint64_t pid : pids)
			got.push_back(ks::procs::ctxt_of_threads(root, pid));
	}
	py::list out;
	for (const ks::procs::ThreadCtxt &c : got) {
		if (c.got == ks::procs::Got::Parsed)
			out.append(py::make_tuple(u64(c.ctxt), u64(c.nonvol_ctxt)));
		else if (c.got == ks::procs::Got::Raw)
			out.append(py::ellipsis());
		else
			out.append(py::none());
	}
	return out;
}

py::list loop_threads(const py::object &proc_root, const std::vector<uint64_t> &pids, const py::iterable &known,
		      int64_t budget)
{
	std::string root = fspath(proc_root);
	std::unordered_set<uint64_t> known_tids;
	for (py::handle k : known) {
		unsigned long long v = PyLong_AsUnsignedLongLong(k.ptr());
		if (v == (unsigned long long)-1 && PyErr_Occurred()) {
			PyErr_Clear(); // not a tid any thread can have: nothing to match
			continue;
		}
		known_tids.insert(v);
	}
	std::vector<ks::procs::LoopThread> got;
	{
		py::gil_scoped_release unlocked;
		got = ks::procs::loop_threads(root, pids, known_tids, budget);
	}
	py::list out;
	for (const ks::procs::LoopThread &t : got)
		out.append(py::make_tuple(u64(t.pid), u64(t.tid),
					  t.got == ks::procs::Got::Parsed ? u64(t.run_delay_ns) : bytes_of(t.raw)));
	return out;
}

} // namespace

PYBIND11_MODULE(_scraper, m)
{
	m.doc() = "The /proc + /sys scraper core shared with the ks-scraper binary.";
	// The agent's per-process sampling (kernelsight.agent.attribution and .exhaustion):
	// the plain case parsed here, anything else handed back raw to the Python parsers.
	m.def("read_procs", &read_procs, py::arg("proc_root"), py::arg("page_kb"), py::arg("sample"),
	      py::arg("parse_sample"), py::arg("parse_io"),
	      "Every PID directory of proc_root, in directory order -> (procs, io).\n"
	      "procs: pid -> sample(comm, state, rss_kb, cpu_ticks, minflt, majflt, ctxt, nonvol_ctxt,\n"
	      "start_ticks, ppid, threads) from PID/stat and PID/status (not read when sample is None);\n"
	      "io: pid -> (wchar, read_bytes, write_bytes) from PID/io (not read when parse_io is None).\n"
	      "Files that are not plain digits go to parse_sample(stat, status) / parse_io(io) as the\n"
	      "bytes read; a pid whose files cannot be read or do not parse (None) is left out.\n"
	      "OSError when proc_root cannot be listed.");
	m.def("ctxt_of_threads", &ctxt_of_threads, py::arg("proc_root"), py::arg("pids"),
	      "Per pid: (voluntary + nonvoluntary, nonvoluntary) switches summed over PID/task/*/status;\n"
	      "None when the task directory cannot be listed; ... when a status is not plain digits\n"
	      "(read that process with the Python reader).");
	m.def("loop_threads", &loop_threads, py::arg("proc_root"), py::arg("pids"), py::arg("known"),
	      py::arg("budget"),
	      "Event-loop threads of pids: (pid, tid, run_delay_ns) for each thread in known or with\n"
	      "wchan do_epoll_wait, budget threads listed at most, in order of first sight; run_delay_ns\n"
	      "is schedstat's raw bytes when its second field is not plain digits.");
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
