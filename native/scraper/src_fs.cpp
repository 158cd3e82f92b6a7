// SPDX-License-Identifier: MIT
// filesystem <- PROC/self/mounts and statvfs(2) of each mount point: space and
// inodes of every real mounted filesystem (gauges only, no state).
//
// Real: pseudo filesystems (proc, sysfs, cgroup, devpts, tracefs, ...: nothing
// there fills up) are skipped, and so is a second mount of the same device
// (a bind mount: same st_dev), and one reporting no blocks.  tmpfs is kept: it
// fills (and holds memory) like any disk.  Bounded: at most kMountLines lines
// of the mount table are looked at and kFsMax filesystems written per read,
// the fullest first.
#include "sources.h"

#include <algorithm>
#include <unordered_set>

#include <sys/stat.h>
#include <sys/statvfs.h>

namespace ks {

static int octal_digit(char ch) { return ch >= '0' && ch <= '7' ? ch - '0' : -1; }

std::string unescape_mount_field(std::string_view s)
{
	std::string out;
	out.reserve(s.size());
	for (size_t i = 0; i < s.size(); i++) {
		if (s[i] == '\\' && i + 3 < s.size()) {
			int a = octal_digit(s[i + 1]), b = octal_digit(s[i + 2]), c = octal_digit(s[i + 3]);
			if (a >= 0 && b >= 0 && c >= 0 && a <= 3) {
				out.push_back((char)(a * 64 + b * 8 + c));
				i += 3;
				continue;
			}
		}
		out.push_back(s[i]);
	}
	return out;
}

std::vector<MountEntry> parse_mounts(std::string_view text, size_t max_lines)
{
	std::vector<MountEntry> out;
	size_t n = 0;
	for (auto line : split_lines(text)) {
		if (n++ >= max_lines)
			break;
		auto w = split_ws(line);
		if (w.size() < 4)
			continue;
		MountEntry m;
		m.device = unescape_mount_field(w[0]);
		m.mountpoint = unescape_mount_field(w[1]);
		m.fstype = std::string(w[2]);
		m.readonly = false;
		std::string_view opts = w[3];
		while (!opts.empty()) {
			size_t comma = opts.find(',');
			if (opts.substr(0, comma) == "ro")
				m.readonly = true;
			opts.remove_prefix(comma == std::string_view::npos ? opts.size() : comma + 1);
		}
		out.push_back(std::move(m));
	}
	return out;
}

bool is_pseudo_fs(std::string_view fstype)
{
	static const std::string_view kPseudo[] = {
		"proc",      "sysfs",      "cgroup",     "cgroup2",  "devpts",     "mqueue",      "debugfs",
		"tracefs",   "securityfs", "pstore",     "bpf",      "autofs",     "hugetlbfs",   "configfs",
		"fusectl",   "binfmt_misc", "rpc_pipefs", "nsfs",    "efivarfs",   "selinuxfs",   "devtmpfs",
		"rootfs",    "nfsd",       "ramfs",      "squashfs", "iso9660",    "fuse.gvfsd-fuse", "fuse.portal",
		"fuse.lxcfs", "overlayfs-meta", "sockfs", "pipefs",  "anon_inodefs",
	};
	for (auto p : kPseudo)
		if (fstype == p)
			return true;
	return false;
}

namespace {

constexpr size_t kMountLines = 4096;
constexpr size_t kFsMax = 32;
constexpr size_t kMountJsonMax = 1000;

struct Fs {
	MountEntry m;
	struct statvfs v;
	double used_frac;
};

class FsSource : public Source {
public:
	void collect(Ctx &c) override
	{
		std::string path = c.proc_root + "/self/mounts", text;
		if (!read_or_warn(c, path, text))
			return;
		std::vector<Fs> all;
		std::unordered_set<uint64_t> devs;
		for (MountEntry &m : parse_mounts(text, kMountLines)) {
			if (is_pseudo_fs(m.fstype))
				continue;
			struct stat st;
			Fs f;
			if (stat(m.mountpoint.c_str(), &st) != 0 || statvfs(m.mountpoint.c_str(), &f.v) != 0)
				continue; // unmounted since, or not ours to see: not an error
			if (f.v.f_blocks == 0 || !devs.insert((uint64_t)st.st_dev).second)
				continue;
			// df's Use%: used / (used + available to unprivileged users).
			double used = (double)(f.v.f_blocks - f.v.f_bfree), avail = (double)f.v.f_bavail;
			f.used_frac = used + avail > 0 ? used / (used + avail) : 1.0;
			f.m = std::move(m);
			all.push_back(std::move(f));
		}
		std::stable_sort(all.begin(), all.end(),
				 [](const Fs &a, const Fs &b) { return a.used_frac > b.used_frac; });
		if (all.size() > kFsMax)
			all.resize(kFsMax);
		for (const Fs &f : all) {
			const uint64_t bs = f.v.f_frsize ? f.v.f_frsize : f.v.f_bsize;
			Event e("filesystem", c.ts_ns);
			e.str("mountpoint", cut_for_json(f.m.mountpoint, kMountJsonMax));
			e.str("device", cut_for_json(f.m.device, kMountJsonMax));
			e.str("fstype", cut_for_json(f.m.fstype, 100));
			e.u64("readonly", f.m.readonly ? 1 : 0);
			e.u64("size_bytes", (uint64_t)f.v.f_blocks * bs);
			e.u64("free_bytes", (uint64_t)f.v.f_bfree * bs);
			e.u64("avail_bytes", (uint64_t)f.v.f_bavail * bs);
			e.u64("reserved_bytes",
			      (uint64_t)(f.v.f_bfree > f.v.f_bavail ? f.v.f_bfree - f.v.f_bavail : 0) * bs);
			// Filesystems without a fixed inode table (btrfs, some FUSE) report 0 inodes.
			e.u64("inodes_total", f.v.f_files ? std::optional<uint64_t>(f.v.f_files) : std::nullopt);
			e.u64("inodes_free", f.v.f_files ? std::optional<uint64_t>(f.v.f_ffree) : std::nullopt);
			c.out.push_back(std::move(e));
		}
	}
};

const RegisterSource kRegister("fs", make_source<FsSource>);

} // namespace

} // namespace ks
