#!/usr/bin/env bash
# Throughput, side by side: Postfix's smtp-source drives the same workload
# to smtp-sink (a) directly, (b) through haproxy in TCP mode, (c) through
# mailbrake (limits on, the load's sender exempt so nothing is refused).
# Runs alternate (direct, haproxy, mailbrake, direct, …), ROUNDS of each, and
# the medians and their ratios are printed as a Markdown table.
#
# The TLS workloads terminate TLS on the client leg: haproxy with `bind …
# ssl` (implicit TLS, the only kind a TCP proxy can do), mailbrake with
# implicit TLS and with STARTTLS. smtp-source has no TLS, so they are driven
# by bench/smtp_load.rs, which speaks the same dialogue (full handshakes, no
# session resumption) and is run the same way against all three.
#
#   bash bench/throughput.sh            # all workloads, 5 rounds
#   ROUNDS=3 WORKLOADS="single tls" bash bench/throughput.sh
#
# Needs Debian's postfix (smtp-source, smtp-sink), haproxy and openssl;
# everything listens on 127.0.0.1. MAILBRAKE_BIN skips the release build.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
WORKLOADS=${WORKLOADS:-"single reuse large tls tls-reuse"}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for tool in smtp-source smtp-sink haproxy openssl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postfix haproxy openssl)" >&2; exit 1; }
done

bin=${MAILBRAKE_BIN:-}
if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin=$root/target/release/mailbrake
fi
cargo build --release --quiet --example smtp_load
load=$root/target/release/examples/smtp_load

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
HAPROXY_TLS=$(port); MB_TLS=$(port); MB_STARTTLS=$(port)

# One certificate (EC P-256, as certs/make-dev-cert.sh makes) for both proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"

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
frontend ftls
  bind 127.0.0.1:$HAPROXY_TLS ssl crt $work/haproxy.pem
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
[[listener]]
name = "bench-tls"
bind = "127.0.0.1:$MB_TLS"
tls = "implicit"
cert = "$work/cert.pem"
key = "$work/key.pem"
upstream = "127.0.0.1:$SINK"
max_sessions = 4000
[[listener]]
name = "bench-starttls"
bind = "127.0.0.1:$MB_STARTTLS"
tls = "starttls"
cert = "$work/cert.pem"
key = "$work/key.pem"
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
for p in "$SINK" "$HAPROXY" "$MB" "$HAPROXY_TLS" "$MB_TLS" "$MB_STARTTLS"; do
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
        tls) echo "--messages 10000 --sessions 50 --size 2000 --rcpts 2" ;;
        tls-reuse) echo "--reuse --messages 20000 --sessions 50 --size 2000 --rcpts 2" ;;
    esac
}

# One smtp-source run against port P: wall seconds to the file TARGET, and
# the CPU seconds of process PID (when given) to cpu-TARGET.
run_plain() {
    local target=$1 p=$2 args=$3 pid=${4:-}
    local c0="" start end
    [[ -n "$pid" ]] && c0=$(cpu "$pid")
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    smtp-source $args -f bench@example.com -t sink@example.net 127.0.0.1:"$p"
    end=$(date +%s.%N)
    echo "$end - $start" | bc >>"$work/$target"
    [[ -n "$pid" ]] && echo "$(cpu "$pid") - $c0" | bc >>"$work/cpu-$target"
    return 0
}

# The same with smtp_load over TLS (MODE implicit or starttls); it prints its
# own wall seconds.
run_tls() {
    local target=$1 p=$2 mode=$3 args=$4 pid=$5
    local c0
    c0=$(cpu "$pid")
    # shellcheck disable=SC2086
    "$load" --connect 127.0.0.1:"$p" --tls "$mode" --ca "$work/cert.pem" $args >>"$work/$target"
    echo "$(cpu "$pid") - $c0" | bc >>"$work/cpu-$target"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

plain_table() {
    echo "| workload | direct (s) | haproxy (s) | mailbrake (s) | mailbrake/haproxy throughput | mailbrake/direct throughput | CPU s haproxy | CPU s mailbrake |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|"
}
tls_table() {
    echo "| workload | haproxy TLS (s) | mailbrake TLS (s) | mailbrake STARTTLS (s) | TLS: mailbrake/haproxy throughput | STARTTLS: mailbrake/haproxy throughput | CPU s haproxy | CPU s mailbrake TLS | CPU s mailbrake STARTTLS |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
}
ratio() { echo "$1 / $2" | bc -l; }

header=""
for w in $WORKLOADS; do
    args=$(args_for "$w")
    for f in direct haproxy mailbrake haproxy-tls mailbrake-tls mailbrake-starttls; do
        : >"$work/$f"; : >"$work/cpu-$f"
    done
    case $w in
        tls*)
            [[ $header == tls ]] || { [[ -n $header ]] && echo; tls_table; header=tls; }
            for _ in $(seq 1 "$ROUNDS"); do
                run_tls haproxy-tls "$HAPROXY_TLS" implicit "$args" "$HAPROXY_PID"
                run_tls mailbrake-tls "$MB_TLS" implicit "$args" "$MB_PID"
                run_tls mailbrake-starttls "$MB_STARTTLS" starttls "$args" "$MB_PID"
            done
            h=$(median <"$work/haproxy-tls"); t=$(median <"$work/mailbrake-tls"); s=$(median <"$work/mailbrake-starttls")
            printf '| %s (`smtp_load %s`) | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n' \
                "$w" "$args" "$h" "$t" "$s" "$(ratio "$h" "$t")" "$(ratio "$h" "$s")" \
                "$(median <"$work/cpu-haproxy-tls")" "$(median <"$work/cpu-mailbrake-tls")" "$(median <"$work/cpu-mailbrake-starttls")"
            ;;
        *)
            [[ $header == plain ]] || { [[ -n $header ]] && echo; plain_table; header=plain; }
            for _ in $(seq 1 "$ROUNDS"); do
                run_plain direct "$SINK" "$args"
                run_plain haproxy "$HAPROXY" "$args" "$HAPROXY_PID"
                run_plain mailbrake "$MB" "$args" "$MB_PID"
            done
            d=$(median <"$work/direct"); h=$(median <"$work/haproxy"); m=$(median <"$work/mailbrake")
            printf '| %s (`smtp-source %s`) | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n' \
                "$w" "$args" "$d" "$h" "$m" "$(ratio "$h" "$m")" "$(ratio "$d" "$m")" \
                "$(median <"$work/cpu-haproxy")" "$(median <"$work/cpu-mailbrake")"
            ;;
    esac
done
echo
echo "$ROUNDS alternating rounds per workload, medians of wall time; throughput ratio > 1 means mailbrake is faster."
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)."
if grep -q "recipient refused" "$work/mailbrake.log"; then
    echo "WARNING: mailbrake refused recipients during the benchmark:" >&2
    grep "recipient refused" "$work/mailbrake.log" | head -3 >&2
fi
