#!/usr/bin/env bash
# CPU per operation of the members and of the load tool, for A/B runs of
# one change (README "Performance", "The client"): three fresh members on
# loopback, 10,000 keys written first, then cmd/bench with the arguments
# given (64 clients spread over the members, 9 s, by default) while the
# user+system CPU of each member and of the load tool is read from
# /proc/<pid>/stat over the middle 6 s. It prints one line: ops/s, the
# members' CPU per op (all three together) and the load tool's, in µs.
#
#	bash bench/cpu.sh --op get --consistency serializable
#	bash bench/cpu.sh --op put
#	bash bench/cpu.sh --op put --clients 16 --rate 4000   # at an equal load
#	SERVER=/tmp/a/raftexample BENCH=/tmp/a/bench bash bench/cpu.sh --op get
#
# CPU per op falls as the load rises (rounds of replication carry more
# writes; README, Limits), so compare builds at the same --rate when
# a change may move throughput, or read both columns together.
#
# SERVER and BENCH name prebuilt binaries to compare builds; by default
# both are built from this checkout. LABEL starts the line. Ports
# 32001-32003 (peers) and 32101-32103 (clients) must be free. Linux only.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
declare -a P
trap 'kill "${P[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
if [ -z "${SERVER:-}" ]; then
	go build -o "$WORK/raftexample" .
	SERVER=$WORK/raftexample
fi
if [ -z "${BENCH:-}" ]; then
	go build -o "$WORK/bench" ./cmd/bench
	BENCH=$WORK/bench
fi
CL=http://127.0.0.1:32001,http://127.0.0.1:32002,http://127.0.0.1:32003
EP=http://127.0.0.1:32101,http://127.0.0.1:32102,http://127.0.0.1:32103
for i in 1 2 3; do
	"$SERVER" --id $i --cluster $CL --port 3210$i --data-dir "$WORK/data" --log-level warn >"$WORK/log$i" 2>&1 &
	P[$i]=$!
done
for _ in $(seq 1 100); do
	curl -sf -m 1 -XPUT http://127.0.0.1:32101/warm -d x >/dev/null && break
	sleep 0.1
done
"$BENCH" --endpoints $EP --clients 16 --op put --count 10000 --prefix g/ --warmup 0s >/dev/null
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--op get)
"$BENCH" --endpoints $EP --clients 64 --keys uniform --prefix g/ --duration 9s --warmup 0s "${ARGS[@]}" >"$WORK/out" 2>&1 &
B=$!
P[4]=$B
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sleep 1.5
declare -A t0
for p in "${P[1]}" "${P[2]}" "${P[3]}" $B; do t0[$p]=$(ticks "$p"); done
s0=$(date +%s.%N)
sleep 6
s1=$(date +%s.%N)
members=0
for p in "${P[1]}" "${P[2]}" "${P[3]}"; do members=$((members + $(ticks "$p") - ${t0[$p]})); done
tool=$(($(ticks $B) - ${t0[$B]}))
wait $B || { cat "$WORK/out" >&2; exit 1; }
ops=$(grep -o '"ops_per_sec":[0-9.]*' "$WORK/out" | cut -d: -f2)
hz=$(getconf CLK_TCK)
# ticks * 1e6 / hz = µs of CPU over the window; divided by the ops in it
awk -v l="${LABEL:-}" -v ops="$ops" -v m="$members" -v t="$tool" -v hz="$hz" -v s="$(echo "$s1 - $s0" | bc)" \
	'BEGIN { n = ops * s; printf "%s%sops/s=%.0f members_us/op=%.1f tool_us/op=%.1f\n", l, (l == "" ? "" : " "), ops, m * 1e6 / hz / n, t * 1e6 / hz / n }'
