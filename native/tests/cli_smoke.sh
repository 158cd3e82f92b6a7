#!/usr/bin/env bash
# ks-scraper end to end on the fixture (run by ctest, also under ASan):
#   cli_smoke.sh PATH/TO/ks-scraper tests/fixtures schema/events/scraper.json
set -uo pipefail
bin=$1 fix=$2 schema=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
die() { echo "FAIL: $*" >&2; fail=1; }

"$bin" --count 2 --interval 0.05 --proc-root "$fix/proc_tree/proc" --sys-root "$fix/proc_tree/sys" \
	>"$tmp/out" 2>"$tmp/err" || die "exit $? (stderr: $(cat "$tmp/err"))"
# 2 reads x (events + producer_stats) + the exit producer_stats
n=$(wc -l <"$tmp/out")
[ "$(grep -c '"type":"producer_stats"' "$tmp/out")" -eq 3 ] || die "want 3 producer_stats lines"
[ ! -s "$tmp/err" ] || die "unexpected stderr: $(cat "$tmp/err")"
tail -1 "$tmp/out" | grep -q "\"type\":\"producer_stats\",\"ts\":[0-9]*,\"producer\":\"ks-scraper\",\"pid\":[0-9]*,\"lines_written_total\":$((n - 1))," \
	|| die "last line: $(tail -1 "$tmp/out")"
# The event types written are exactly the schema's (its keys at the events
# level), each in both reads: a source left out of the link shows here.
types=$(grep -oE '^    "[a-z0-9_]+": \{' "$schema" | cut -d'"' -f2)
[ -n "$types" ] || die "no event types found in $schema"
for t in $types; do
	c=$(grep -c "^{\"type\":\"$t\"," "$tmp/out")
	[ "$c" -ge 2 ] && [ $((c % 2)) -eq 0 ] || die "event type $t: $c lines"
done
for t in $(grep -oE '^\{"type":"[a-z0-9_]+"' "$tmp/out" | cut -d'"' -f4 | sort -u); do
	[ "$t" = producer_stats ] || grep -qx "$t" <<<"$types" || die "event type $t is not in $schema"
done

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
