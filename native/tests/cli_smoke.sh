#!/usr/bin/env bash
# ks-scraper end to end on the fixture (run by ctest, also under ASan):
#   cli_smoke.sh PATH/TO/ks-scraper tests/fixtures
set -uo pipefail
bin=$1 fix=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
die() { echo "FAIL: $*" >&2; fail=1; }

"$bin" --count 2 --interval 0.05 --proc-root "$fix/proc_tree/proc" --sys-root "$fix/proc_tree/sys" \
	>"$tmp/out" 2>"$tmp/err" || die "exit $? (stderr: $(cat "$tmp/err"))"
# 2 reads x (15 events + producer_stats) + the exit producer_stats
[ "$(wc -l <"$tmp/out")" -eq 33 ] || die "want 33 lines, got $(wc -l <"$tmp/out")"
[ ! -s "$tmp/err" ] || die "unexpected stderr: $(cat "$tmp/err")"
tail -1 "$tmp/out" | grep -q '"type":"producer_stats","ts":[0-9]*,"producer":"ks-scraper","pid":[0-9]*,"lines_written_total":32,' \
	|| die "last line: $(tail -1 "$tmp/out")"

"$bin" --interval 0 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] || die "--interval 0: rc $rc, $(cat "$tmp/err")"
"$bin" --bogus >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q bogus "$tmp/err" || die "--bogus: rc $rc, $(cat "$tmp/err")"

touch "$tmp/regular"
"$bin" --count 1 --output "$tmp/regular" >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q 'not a FIFO' "$tmp/err" || die "regular file output: rc $rc, $(cat "$tmp/err")"

# SIGTERM mid-run: final producer_stats, exit 0.
"$bin" --interval 0.05 --proc-root "$fix/proc_tree/proc" --sys-root "$fix/proc_tree/sys" >"$tmp/out" &
pid=$!
sleep 0.5
kill -TERM $pid
wait $pid; rc=$?
[ $rc -eq 0 ] || die "SIGTERM: exit $rc"
tail -1 "$tmp/out" | grep -q '"type":"producer_stats"' || die "SIGTERM: no final producer_stats"
exit $fail
