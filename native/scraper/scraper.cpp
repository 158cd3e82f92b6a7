// SPDX-License-Identifier: MIT
#include "ks_scraper.h"
#include "sources.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "ks_json.h"
#include "ks_out.h"

namespace ks {

void Event::u64(const char *key, std::optional<uint64_t> v)
{
	Field f(key);
	if (v) {
		f.kind = Field::U64;
		f.u = *v;
	}
	fields.push_back(std::move(f));
}

void Event::i64(const char *key, std::optional<int64_t> v)
{
	Field f(key);
	if (v) {
		f.kind = Field::I64;
		f.i = *v;
	}
	fields.push_back(std::move(f));
}

void Event::f64(const char *key, std::optional<double> v)
{
	Field f(key);
	// JSON has no NaN/inf: make the dict agree with the line.
	if (v && std::isfinite(*v)) {
		f.kind = Field::F64;
		f.f = *v;
	}
	fields.push_back(std::move(f));
}

void Event::str(const char *key, const std::string &v)
{
	Field f(key);
	f.kind = Field::Str;
	f.s = v;
	fields.push_back(std::move(f));
}

const Field *Event::find(const std::string &key) const
{
	for (const Field &f : fields)
		if (key == f.key)
			return &f;
	return nullptr;
}

int event_to_json(const Event &e, struct ks_json *j)
{
	ks_json_begin(j, e.type.c_str(), e.ts_ns);
	for (const Field &f : e.fields) {
		switch (f.kind) {
		case Field::Null: ks_json_null(j, f.key); break;
		case Field::U64: ks_json_u64(j, f.key, f.u); break;
		case Field::I64: ks_json_i64(j, f.key, f.i); break;
		case Field::F64: ks_json_f64(j, f.key, f.f); break;
		case Field::Str: ks_json_str(j, f.key, f.s.c_str()); break;
		}
	}
	return ks_json_end(j);
}

std::string event_to_line(const Event &e)
{
	struct ks_json j;
	if (event_to_json(e, &j) != 0)
		return std::string();
	return std::string(j.buf, j.len);
}

// A function-local static: the registrars run during static initialisation
// of other translation units, in an order the language leaves open.
static SourceRegistry &registry()
{
	static SourceRegistry r;
	return r;
}

RegisterSource::RegisterSource(const char *name, SourceFactory make)
{
	if (!registry().emplace(name, make).second) {
		fprintf(stderr, "ks scraper: source '%s' registered twice\n", name);
		abort();
	}
}

const SourceRegistry &registered_sources() { return registry(); }

Scraper::Scraper(std::string proc_root, std::string sys_root)
	: proc_root_(std::move(proc_root)), sys_root_(std::move(sys_root)), tcp_(std::make_unique<TcpSockets>()),
	  files_(std::make_unique<FileCache>()), procs_(std::make_unique<ProcList>())
{
	for (const auto &src : registered_sources())
		sources_.push_back(src.second());
}

Scraper::~Scraper() = default;

std::vector<Event> Scraper::collect()
{
	return collect_at(ks_now_epoch_ns(), ks_now_mono_ns());
}

std::vector<Event> Scraper::collect_at(uint64_t ts_ns, uint64_t clock_ns)
{
	double dt_s = NAN;
	if (last_clock_ns_ && clock_ns > *last_clock_ns_)
		dt_s = (double)(clock_ns - *last_clock_ns_) / 1e9;
	last_clock_ns_ = clock_ns;

	std::vector<Event> out;
	out.reserve(last_events_);
	tcp_->next_collect();
	procs_->next_collect();
	files_->next_collect();
	Ctx c{proc_root_, sys_root_, warn_, ts_ns, dt_s, out, opt_, *tcp_, *files_, *procs_};
	for (auto &s : sources_)
		s->collect(c);
	last_events_ = out.size();
	return out;
}

} // namespace ks
