#!/usr/bin/env bash
# Record the cgroup v1 part of the scraper fixture (SYS/fs/cgroup of
# tests/fixtures/proc_tree and proc_tree_t1) on a live cgroup-v1 (hybrid) host,
# as root: two snapshots ~2 s apart of the files src_cgroup.cpp reads, for the
# hierarchy roots and a small tree made for the purpose:
#   ks-fixture.slice/                              no limit
#   ks-fixture.slice/docker-<64 hex>.scope         64 MiB limit, a process holding ~48 MiB
#   ks-fixture.slice/busy.service                  a busy loop under a 20 % CPU quota, direct writes
# (other cgroups of the host are left out).  The rest of proc_tree is
# record_fixture.sh's and is not touched.
#   native/tests/record_cgroup_fixture.sh [DEST_DIR]   (default tests/fixtures)
set -euo pipefail
dest=${1:-"$(dirname "$0")/../../tests/fixtures"}
cg=/sys/fs/cgroup
ctr=docker-4f1c0ffee0ddba11c0debeef5eed0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b.scope
paths=(ks-fixture.slice "ks-fixture.slice/$ctr" ks-fixture.slice/busy.service)

declare -A files=(
	[memory]="memory.usage_in_bytes memory.limit_in_bytes memory.failcnt memory.oom_control memory.memsw.usage_in_bytes memory.memsw.limit_in_bytes memory.max_usage_in_bytes"
	[cpuacct]="cpuacct.usage"
	[cpu]="cpu.stat cpu.cfs_quota_us cpu.cfs_period_us"
	[blkio]="blkio.throttle.io_service_bytes_recursive blkio.throttle.io_serviced_recursive"
	[unified]="cgroup.controllers memory.pressure cpu.pressure cpu.stat"
)

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.5
	for h in "${!files[@]}"; do
		for ((i = ${#paths[@]} - 1; i >= 0; i--)); do rmdir "$cg/$h/${paths[$i]}" 2>/dev/null || true; done
	done
	rm -f /var/tmp/ks_cg_fixture.tmp
}
trap cleanup EXIT

for h in "${!files[@]}"; do
	for p in "${paths[@]}"; do mkdir -p "$cg/$h/$p"; done
done
echo $((64 << 20)) >"$cg/memory/ks-fixture.slice/$ctr/memory.limit_in_bytes"
echo 20000 >"$cg/cpu/ks-fixture.slice/busy.service/cpu.cfs_quota_us"

# join HIERARCHY/PATH... : the calling shell moves itself, then execs the job.
sh -c "for d in memory cpu cpuacct unified; do echo \$\$ > $cg/\$d/ks-fixture.slice/$ctr/cgroup.procs; done
       exec python3 -c 'import time; b = b\"x\" * (48 << 20); time.sleep(60)'" &
pids+=($!)
sh -c "for d in memory cpu cpuacct blkio unified; do echo \$\$ > $cg/\$d/ks-fixture.slice/busy.service/cgroup.procs; done
       dd if=/dev/zero of=/var/tmp/ks_cg_fixture.tmp bs=64k count=256 oflag=direct status=none
       exec sh -c 'while :; do :; done'" &
pids+=($!)
sleep 2

snap() {
	local out=$1/sys/fs/cgroup
	rm -rf "$out"
	for h in "${!files[@]}"; do
		for p in "" "${paths[@]}"; do
			mkdir -p "$out/$h/$p"
			for f in ${files[$h]}; do
				if [ -e "$cg/$h/$p/$f" ]; then cat "$cg/$h/$p/$f" >"$out/$h/$p/$f"; fi
			done
		done
	done
	date +%s%N >"$out/RECORDED_AT_NS"
}

snap "$dest/proc_tree"
sleep 2
snap "$dest/proc_tree_t1"
