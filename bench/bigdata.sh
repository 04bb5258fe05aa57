#!/usr/bin/env bash
# The large-data run of README "Performance": three fresh members on
# loopback, loaded with KEYS fresh keys (16 bytes from 100,000 on) of
# 256-byte values by 64 closed-loop clients; every member's RSS sampled
# every 0.5 s; the snapshot bytes each member wrote; 10 s more load at that
# size; then member 1 stopped (SIGTERM) and restarted, timed to its first
# linearizable read; then the worst case for a restart: the loaded keys
# overwritten until member 1's log since its newest snapshot is just short
# of the size that makes the next one due (45 % of that snapshot, of the
# 50 % that triggers it), and member 1 killed (SIGKILL), so the restart
# replays the longest log it can; then the same log after a graceful stop
# (SIGTERM), which writes a snapshot first; last, a fourth member added,
# which the leader sends its newest snapshot (a file of about the store's
# size), timed to the newcomer's first linearizable read, with the peak RSS
# of the leader and of the newcomer meanwhile.
#
#	bash bench/bigdata.sh            # 1,000,000 keys; 4-9 minutes here
#	KEYS=200000 bash bench/bigdata.sh
#	RESTARTS=4 bash bench/bigdata.sh # restart member 1 four times over
#	KEEP=1 bash bench/bigdata.sh     # keep the data dirs and member logs
#
# Ports 32001-32004 (peers) and 32101-32104 (clients) must be free.
# Linux only (/proc).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
RESTARTS=${RESTARTS:-1}
WORK=$(mktemp -d)
declare -a P
# The members are not jobs of this shell (start runs in a command
# substitution): kill them by pid too, or a failed run leaves them running.
# A failed run keeps its data dirs and member logs, and says where; so does
# any run with KEEP set (the logs time each snapshot and each restart's
# steps).
trap 'rc=$?; kill $(jobs -p) "${P[@]}" 2>/dev/null || true
if [ $rc != 0 ]; then echo "failed (exit $rc); kept $WORK (member logs: $D/log*)" >&2
elif [ -n "${KEEP:-}" ]; then echo "kept $WORK (member logs: $D/log*)" >&2
else rm -rf "$WORK"; fi' EXIT
go build -o "$WORK/raftexample" .
go build -o "$WORK/bench" ./cmd/bench
D=$WORK/data
mkdir -p "$D"
CL=http://127.0.0.1:32001,http://127.0.0.1:32002,http://127.0.0.1:32003
EP=http://127.0.0.1:32101,http://127.0.0.1:32102,http://127.0.0.1:32103
start() {
	"$WORK/raftexample" --id "$1" --cluster $CL --port "3210$1" --data-dir "$D" --log-level info "${@:2}" >>"$D/log$1" 2>&1 &
	echo $!
}
firstRead() { # seconds until member $1 answers a linearizable read (at most 20)
	local t0 t1
	t0=$(date +%s.%N)
	for _ in $(seq 1 1000); do
		curl -sf -m 1 "http://127.0.0.1:3210$1/v1/kv/?prefix=bench-key-&limit=1" >/dev/null && break
		sleep 0.02
	done
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc
}
for i in 1 2 3; do P[$i]=$(start $i); done
sleep 3
# Each sample is tagged with the phase it was taken in (the file phase):
# the load holds KEYS keys at most, the 10 s after it more, so each phase's
# peak is set against the raw bytes of the keys the store holds by its end.
echo load >"$D/phase"
# Member 1's key count goes beside each sample too, to set each sample
# against the raw bytes the store held at that moment.
(while true; do
	ph=$(cat "$D/phase")
	k=$(curl -sf -m 1 "http://127.0.0.1:32101/v1/status" | grep -o '"keys": *[0-9]*' | grep -o '[0-9]*$' || echo 0)
	for i in 1 2 3; do echo "$ph $i $(awk '/VmRSS/{print $2}' /proc/${P[$i]}/status 2>/dev/null || echo 0) ${k:-0}"; done
	sleep 0.5
done) >"$D/rss.txt" &
sampler=$!
echo "load: $KEYS keys, 64 clients"
"$WORK/bench" --endpoints $EP --clients 64 --op put --value-size 256 --prefix bench-key- --count "$KEYS" --warmup 0s | sed -n 1,4p
echo after >"$D/phase"
echo "then 10 s more at that size:"
"$WORK/bench" --endpoints $EP --clients 64 --op put --value-size 256 --prefix after-key- --duration 10s --warmup 1s | sed -n 1,4p
kill $sampler
# Every key here is 16 bytes with a 256-byte value; the store's count
# includes the after phase's warm-up writes, which the load tool does not.
keys=$(curl -sf "http://127.0.0.1:32101/v1/status" | grep -o '"keys": *[0-9]*' | grep -o '[0-9]*$')
raw=$((KEYS * (16 + 256)))
rawAll=$((keys * (16 + 256)))
echo "raw keys and values: $((raw / 1000000)) MB loaded; $((rawAll / 1000000)) MB ($keys keys) after the 10 s more"
for i in 1 2 3; do
	awk -v m=$i -v raw=$raw -v all=$rawAll -v h=$((KEYS / 2)) '$2==m && $1=="load" && $3>x {x=$3} $2==m && $1=="after" && $3>y {y=$3}
		$2==m && $4>=h && $3*1024/($4*272)>r {r=$3*1024/($4*272); rk=$4}
		END {printf "member %d peak RSS %.0f MiB while loading (%.1f× the raw data loaded), %.0f MiB in the 10 s after (%.1f× the raw data then); at most %.2f× the raw data held at the moment, once it held half the keys or more (at %d keys)\n", m, x/1024, x*1024/raw, y/1024, y*1024/all, r, rk}' "$D/rss.txt"
	grep -h 'saved snapshot' "$D/log$i" | grep -o '"bytes": [0-9]*' |
		awk -F': ' -v m=$i -v raw=$rawAll '{s+=$2; n++} END {printf "member %d wrote %d snapshots, %.0f MB (%.1f× the raw data written)\n", m, n, s/1e6, s/raw}'
done
restart1() { # signal $2 to member 1, restart it, time both, and sample its RSS meanwhile
	local t t0 stopped
	t0=$(date +%s.%N)
	kill -s "$2" "${P[1]}"
	# Not this shell's child (start runs in a command substitution), so
	# no wait: poll until it is gone or a zombie (its exit is done).
	while [ -e "/proc/${P[1]}" ] && [ "$(awk '{print $3}' "/proc/${P[1]}/stat" 2>/dev/null)" != Z ]; do sleep 0.02; done
	# The main thread turns zombie before the others have exited, and until
	# the last one has, the process still holds its listening sockets: a
	# start right then failed with "address already in use". Wait for the
	# ports too (at most 10 s).
	for _ in $(seq 1 500); do
		ss -Hltn "( sport = :32001 or sport = :32101 )" 2>/dev/null | grep -q . || break
		sleep 0.02
	done
	stopped=$(echo "$(date +%s.%N) - $t0" | bc)
	P[1]=$(start 1)
	(while kill -0 "${P[1]}" 2>/dev/null; do awk '/VmRSS/{print $2}' /proc/${P[1]}/status 2>/dev/null || true; sleep 0.05; done) >"$D/rss1.txt" &
	local sampler=$!
	t=$(firstRead 1)
	sleep 1
	if ! kill -0 "${P[1]}" 2>/dev/null; then
		echo "member 1 exited after its restart; its log ends:" >&2
		tail -20 "$D/log1" >&2
		exit 1
	fi
	kill $sampler
	echo "member 1 stopped by SIG$2 in $stopped s, restarted$1: first linearizable read after $t s; RSS peak $(sort -n "$D/rss1.txt" | tail -1 | awk '{printf "%.0f", $1/1024}') MiB, 1 s later $(awk '/VmRSS/{printf "%.0f", $2/1024}' /proc/${P[1]}/status) MiB"
}
metric() { # value of an unlabelled metric on member $1
	curl -sf "http://127.0.0.1:3210$1/metrics" | awk -v n="$2" '$1==n {printf "%.0f", $2}'
}
for r in $(seq 1 "$RESTARTS"); do
	restart1 "" TERM
done
for _ in $(seq 1 200); do
	since=$(metric 1 raftexample_log_bytes_since_snapshot)
	size=$(metric 1 raftexample_snapshot_size_bytes)
	[ "$since" -ge $((size * 45 / 100)) ] && break
	"$WORK/bench" --endpoints $EP --clients 64 --op put --value-size 256 --prefix bench-key- --keys uniform --keyspace "$KEYS" --count 10000 --warmup 0s >/dev/null
done
echo "member 1's log since its newest snapshot: $((since / 1000000)) MB (snapshot $((size / 1000000)) MB)"
restart1 " on that log" KILL
restart1 " on that log (it writes a snapshot before it stops)" TERM
lead=$(curl -sf http://127.0.0.1:32101/v1/members | grep -o '"leader":[0-9]*' | head -1 | cut -d: -f2)
before=$(awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/${P[$lead]}/status")
curl -sf -XPOST http://127.0.0.1:32101/4 -d http://127.0.0.1:32004 >/dev/null
CL=$CL,http://127.0.0.1:32004
P[4]=$(start 4 --join)
(while kill -0 "${P[4]}" 2>/dev/null; do
	echo "$(awk '/VmRSS/{print $2}' "/proc/${P[$lead]}/status" 2>/dev/null || echo 0) $(awk '/VmRSS/{print $2}' "/proc/${P[4]}/status" 2>/dev/null || echo 0)"
	sleep 0.05
done) >"$D/rss4.txt" &
sampler=$!
t=$(firstRead 4)
sleep 1
kill $sampler
awk -v t="$t" -v b="$before" -v raw=$rawAll '$1>l {l=$1} $2>n {n=$2} END {printf "member 4 added: first linearizable read after %s s; peak RSS meanwhile: the leader %.0f MiB (%.1f× raw; %s MiB before), member 4 %.0f MiB (%.1f× raw)\n", t, l/1024, l*1024/raw, b, n/1024, n*1024/raw}' "$D/rss4.txt"
kill "${P[1]}" "${P[2]}" "${P[3]}" "${P[4]}"
wait 2>/dev/null || true
