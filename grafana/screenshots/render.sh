#!/usr/bin/env bash
# Regenerates grafana/screenshots/dashboard.png and alerts.png from a real run.
#
# On 127.0.0.1 only, in a temporary directory, on free ports:
#   1. Postfix smtp-sink as the upstream MTA;
#   2. mailbrake (cargo build --release) with 12/1h per sender, a lock after
#      20 refusals, and seven [[vhost]]s told apart by source address
#      (127.0.0.2 ... 127.0.0.8);
#   3. Prometheus (Debian's package) scraping mailbrake every 2 s and
#      evaluating grafana/alerts/mailbrake.rules.yml every 2 s;
#   4. render.py traffic: five calm vhosts, a newsletter that reaches its
#      limit, and a compromised site that sends hundreds of recipients, is
#      deferred, then locked (about 4 minutes);
#   5. render.py draw: the dashboard's queries (grafana/mailbrake-dashboard.json)
#      run against that Prometheus, drawn in the dashboard's layout;
#   6. render.py alerts: Prometheus' alerts page in headless Chromium.
# Everything it starts is stopped by pid at exit. About 5 minutes in all.
#
# Needs: cargo, postfix (smtp-sink), prometheus, chromium, python3 with venv.
# As root it installs the missing Debian packages; the Python packages
# (matplotlib, websocket-client) go into a venv under ~/.cache.
# Environment:
#   MAILBRAKE_BIN   use this binary instead of building one
#   DURATION        seconds of traffic (default 240)
#   OUT             where the images go (default: this directory)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-$here}
duration=${DURATION:-240}
cd "$root"

need=()
command -v smtp-sink >/dev/null || need+=(postfix)
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "render: missing ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
    echo "render: installing ${need[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv=${XDG_CACHE_HOME:-$HOME/.cache}/mailbrake-screenshots/venv
if ! "$venv/bin/python" -c 'import matplotlib, websocket' 2>/dev/null; then
    echo "render: making $venv (matplotlib, websocket-client)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q matplotlib websocket-client
fi
py=$venv/bin/python

bin=${MAILBRAKE_BIN:-}
if [[ -z "$bin" ]]; then
    echo "render: building mailbrake (cargo build --release)"
    cargo build --release --quiet
    bin=$root/target/release/mailbrake
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Five free loopback ports: MTA, SMTP listener, admin, Prometheus, DevTools.
read -r p_sink p_smtp p_admin p_prom p_cdp < <("$py" - <<'EOF'
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
EOF
)

# 1. The upstream MTA.
sink_user=()
[[ $(id -u) -eq 0 ]] && sink_user=(-u nobody)
smtp-sink "${sink_user[@]}" "127.0.0.1:$p_sink" 100 &
pids+=($!)

# 2. mailbrake.
cat >"$work/mailbrake.toml" <<EOF
[admin]
bind = "127.0.0.1:$p_admin"
metrics_top_senders = 50

[state]
dir = "$work/state"

[server]
hostname = "mail.localhost"

[[listener]]
name = "smtp"
bind = "127.0.0.1:$p_smtp"
tls = "none"
upstream = "127.0.0.1:$p_sink"
allow_plaintext_auth = true

[limits]
default = "12/1h"
action = "defer"
lock_after_refusals = 20
lock_window = "1h"
lock_duration = "24h"

[protect]
connections_per_ip = "off"

$("$py" "$here/render.py" vhosts)
EOF
"$bin" check-config -c "$work/mailbrake.toml" >/dev/null
"$bin" run -c "$work/mailbrake.toml" 2>"$work/mailbrake.log" &
mb=$!
pids+=($mb)
for _ in $(seq 1 100); do
    grep -q listening "$work/mailbrake.log" 2>/dev/null && break
    kill -0 "$mb" 2>/dev/null || { cat "$work/mailbrake.log" >&2; exit 1; }
    sleep 0.1
done

# 3. Prometheus.
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $root/grafana/alerts/mailbrake.rules.yml
scrape_configs:
  - job_name: mailbrake
    static_configs:
      - targets: ["127.0.0.1:$p_admin"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$p_prom" 2>"$work/prometheus.log" &
prom=$!
pids+=($prom)
prom_url=http://127.0.0.1:$p_prom
for _ in $(seq 1 150); do
    curl -fsS "$prom_url/api/v1/query?query=mailbrake_build_info" 2>/dev/null | grep -q '"result":\[{' && break
    kill -0 "$prom" 2>/dev/null || { cat "$work/prometheus.log" >&2; exit 1; }
    sleep 0.2
done
start=$(date +%s)
echo "render: smtp-sink :$p_sink, mailbrake :$p_smtp (admin :$p_admin), Prometheus :$p_prom"
sleep 10  # a quiet baseline first

# 4. Traffic.
"$py" "$here/render.py" traffic --smtp "127.0.0.1:$p_smtp" --duration "$duration"
sleep 15  # a few more scrapes and rule evaluations
end=$(date +%s)

echo "render: mailbrake's log, lock lines:"
grep -E "sender locked" "$work/mailbrake.log" | sed 's/^/  /' | head -5
echo "render: alerts in Prometheus:"
curl -fsS "$prom_url/api/v1/alerts" | "$py" -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    print("  %s %s %s" % (a["labels"]["alertname"], a["state"], a["labels"].get("sender", "")))'

# 5. and 6.
"$py" "$here/render.py" draw --prom "$prom_url" --start "$start" --end "$end" \
    --out "$out/dashboard.png"
"$py" "$here/render.py" alerts --chromium "$(command -v chromium)" --cdp-port "$p_cdp" \
    --url "$prom_url/classic/alerts" --out "$out/alerts.png"
