#!/usr/bin/env bash
# Throughput, side by side: Postfix's smtp-source drives the same workload
# to smtp-sink (a) directly, (b) through haproxy in TCP mode, (c) through
# mailbrake (limits on, the load's sender exempt so nothing is refused).
# Runs alternate (direct, haproxy, mailbrake, direct, …), ROUNDS of each, and
# the medians and their ratios are printed as a Markdown table.
#
#   bash bench/throughput.sh            # all workloads, 5 rounds
#   ROUNDS=3 WORKLOADS=single bash bench/throughput.sh
#
# Needs Debian's postfix (smtp-source, smtp-sink) and haproxy; everything
# listens on 127.0.0.1. MAILBRAKE_BIN skips the release build.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
WORKLOADS=${WORKLOADS:-"single reuse large"}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for tool in smtp-source smtp-sink haproxy; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postfix haproxy)" >&2; exit 1; }
done

bin=${MAILBRAKE_BIN:-}
if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin=$root/target/release/mailbrake
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SINK=$(port); HAPROXY=$(port); MB=$(port); ADMIN=$(port)

ulimit -n 20000 2>/dev/null || true
sink_user=()
[[ $(id -u) -eq 0 ]] && sink_user=(-u nobody)
smtp-sink "${sink_user[@]}" 127.0.0.1:"$SINK" 1024 &
pids+=($!)

cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$HAPROXY
  default_backend b
backend b
  server s 127.0.0.1:$SINK
EOF
haproxy -f "$work/haproxy.cfg" -D -p "$work/haproxy.pid"
pids+=("$(cat "$work/haproxy.pid")")

cat >"$work/mailbrake.toml" <<EOF
[admin]
bind = "127.0.0.1:$ADMIN"
[server]
hostname = "mb.bench"
[state]
dir = "$work/state"
[limits]
default = "12/1h"
exempt_networks = ["127.0.0.0/8"]
[protect]
connections_per_ip = "off"
[[listener]]
name = "bench"
bind = "127.0.0.1:$MB"
tls = "none"
upstream = "127.0.0.1:$SINK"
max_sessions = 4000
EOF
MAILBRAKE_LOG=${MAILBRAKE_LOG:-info} "$bin" run -c "$work/mailbrake.toml" 2>"$work/mailbrake.log" &
pids+=($!)
MB_PID=$!
HAPROXY_PID=$(cat "$work/haproxy.pid")

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# Wait until all three answer (bounded).
for p in "$SINK" "$HAPROXY" "$MB"; do
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break
        sleep 0.1
    done
done

args_for() {
    case $1 in
        single) echo "-m 20000 -s 50 -l 2000 -r 2" ;;      # one message per connection
        reuse) echo "-d -m 20000 -s 50 -l 2000 -r 2" ;;    # messages over kept connections
        large) echo "-m 400 -s 20 -l 1000000 -r 2" ;;      # 1 MB messages
    esac
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "| workload | direct (s) | haproxy (s) | mailbrake (s) | mailbrake/haproxy throughput | mailbrake/direct throughput | CPU s haproxy | CPU s mailbrake |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|"
for w in $WORKLOADS; do
    args=$(args_for "$w")
    : >"$work/direct" ; : >"$work/haproxy" ; : >"$work/mailbrake" ; : >"$work/cpu-haproxy" ; : >"$work/cpu-mailbrake"
    for _ in $(seq 1 "$ROUNDS"); do
        for target in direct haproxy mailbrake; do
            case $target in
                direct) p=$SINK ;;
                haproxy) p=$HAPROXY ;;
                mailbrake) p=$MB ;;
            esac
            c0h=$(cpu "$HAPROXY_PID"); c0m=$(cpu "$MB_PID")
            start=$(date +%s.%N)
            # shellcheck disable=SC2086
            smtp-source $args -f bench@example.com -t sink@example.net 127.0.0.1:"$p"
            end=$(date +%s.%N)
            echo "$end - $start" | bc >>"$work/$target"
            case $target in
                haproxy) echo "$(cpu "$HAPROXY_PID") - $c0h" | bc >>"$work/cpu-haproxy" ;;
                mailbrake) echo "$(cpu "$MB_PID") - $c0m" | bc >>"$work/cpu-mailbrake" ;;
            esac
        done
    done
    d=$(median <"$work/direct"); h=$(median <"$work/haproxy"); m=$(median <"$work/mailbrake")
    ch=$(median <"$work/cpu-haproxy"); cm=$(median <"$work/cpu-mailbrake")
    printf '| %s (`smtp-source %s`) | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n' \
        "$w" "$args" "$d" "$h" "$m" "$(echo "$h / $m" | bc -l)" "$(echo "$d / $m" | bc -l)" "$ch" "$cm"
done
echo
echo "$ROUNDS alternating rounds per workload, medians of wall time; throughput ratio > 1 means mailbrake is faster."
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)."
if grep -q "recipient refused" "$work/mailbrake.log"; then
    echo "WARNING: mailbrake refused recipients during the benchmark:" >&2
    grep "recipient refused" "$work/mailbrake.log" | head -3 >&2
fi
