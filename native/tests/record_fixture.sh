#!/usr/bin/env bash
# Record the scraper fixture: two snapshots of the files ks-scraper reads,
# taken ~2 s apart on a live machine, with some disk and TCP activity in
# between so the rates are not all zero.
#   native/tests/record_fixture.sh [DEST_DIR]   (default tests/fixtures)
set -euo pipefail
dest=${1:-"$(dirname "$0")/../../tests/fixtures"}

snap() {
	local out=$1
	rm -rf "$out"
	mkdir -p "$out/proc/net" "$out/proc/pressure" "$out/sys/block"
	for f in meminfo loadavg stat vmstat; do cat /proc/$f >"$out/proc/$f"; done
	for f in dev tcp tcp6 snmp netstat; do cat /proc/net/$f >"$out/proc/net/$f"; done
	for f in /proc/pressure/*; do cat "$f" >"$out/proc/pressure/$(basename "$f")"; done
	for d in /sys/block/*; do
		mkdir -p "$out/sys/block/$(basename "$d")"
		cat "$d/stat" >"$out/sys/block/$(basename "$d")/stat"
	done
	date +%s%N >"$out/RECORDED_AT_NS"
}

# Some TCP sockets: a listener, a kept-open connection, and closed ones in TIME_WAIT.
python3 -m http.server 18765 --bind 127.0.0.1 >/dev/null 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
sleep 0.5
exec 3<>/dev/tcp/127.0.0.1/18765
for i in 1 2 3; do curl -s -o /dev/null http://127.0.0.1:18765/ || true; done

snap "$dest/proc_tree"
dd if=/dev/zero of=/var/tmp/ks_fixture.tmp bs=1M count=32 conv=fsync status=none
rm -f /var/tmp/ks_fixture.tmp
for i in 1 2; do curl -s -o /dev/null http://127.0.0.1:18765/ || true; done
sleep 2
snap "$dest/proc_tree_t1"
exec 3>&-
