#!/usr/bin/env bash
# mailbrake in front of a real MTA, in one command.
#
# Builds mailbrake, makes a development certificate, starts Postfix's
# smtp-sink as the upstream MTA on 127.0.0.1:10025, starts mailbrake with
# config/mailbrake.toml (plain 2525, STARTTLS 2587, implicit TLS 2465),
# relays one message with swaks over each, then sends one message to 12
# recipients to show the limit (12/1h) refusing the last 3, and the
# operator's view of that sender. Then mailbrake keeps running in
# the foreground (Ctrl-C stops everything) so you can send your own:
#
#   swaks --server 127.0.0.1:2587 --tls --from a@example.com --to b@example.net
#
# Options:
#   --once   stop after the demo messages (exit status says whether all went as described)
# Environment:
#   MAILBRAKE_BIN   use this binary instead of building one (cargo build --release)
#
# Needs postfix (for smtp-sink), swaks and openssl; installs them with apt-get
# when missing and run as root. Everything listens on 127.0.0.1 only.
set -euo pipefail

once=false
[[ "${1:-}" == "--once" ]] && once=true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need=()
command -v smtp-sink >/dev/null || need+=(postfix)
command -v swaks >/dev/null || need+=(swaks)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "demo: missing ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
    echo "demo: installing ${need[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

bin=${MAILBRAKE_BIN:-}
if [[ -z "$bin" ]]; then
    echo "demo: building mailbrake (cargo build --release)"
    cargo build --release --quiet
    bin=$root/target/release/mailbrake
fi

bash certs/make-dev-cert.sh >/dev/null

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The upstream MTA: smtp-sink accepts everything and dumps each message.
sink_user=()
[[ $(id -u) -eq 0 ]] && sink_user=(-u nobody) && chmod 777 "$work"
smtp-sink "${sink_user[@]}" -d "$work/dump/%M." 127.0.0.1:10025 100 &
pids+=($!)

# The example configuration, with its state in this run's own directory so
# that every demo starts with empty counters.
sed "s|^dir = \"state\"|dir = \"$work/state\"|" config/mailbrake.toml >"$work/mailbrake.toml"
"$bin" check-config -c "$work/mailbrake.toml"
"$bin" run -c "$work/mailbrake.toml" 2>"$work/mailbrake.log" &
mb=$!
pids+=($mb)

# Wait until mailbrake listens on all three ports (bounded).
for _ in $(seq 1 100); do
    [[ $(grep -c "listening" "$work/mailbrake.log" 2>/dev/null || true) -ge 3 ]] && break
    kill -0 "$mb" 2>/dev/null || { cat "$work/mailbrake.log" >&2; exit 1; }
    sleep 0.1
done

ok=0
for mode in plain starttls implicit; do
    case $mode in
        plain) args=(--server 127.0.0.1:2525) ;;
        starttls) args=(--server 127.0.0.1:2587 --tls) ;;
        implicit) args=(--server 127.0.0.1:2465 --tlsc) ;;
    esac
    if swaks "${args[@]}" --from demo@example.com --to friend@example.net \
        --header "Subject: mailbrake demo ($mode)" --body "Relayed by mailbrake over $mode." \
        --silent 2 >"$work/swaks-$mode.log" 2>&1; then
        echo "demo: $mode: relayed"
        ok=$((ok + 1))
    else
        echo "demo: $mode: FAILED"
        cat "$work/swaks-$mode.log"
    fi
done

# The limit at work: the same client sends one message to 12 recipients
# under default = "12/1h", with 3 already sent. A client on this machine is
# known by its Unix user: the sender key is user:NAME of whoever runs this.
key="user:$(id -un)"
echo
echo "demo: the limit at work: one message to 12 recipients from the same client (default = \"12/1h\", 3 sent already):"
rcpts=$(printf 'r%d@example.net,' $(seq 1 12))
swaks --server 127.0.0.1:2525 --from demo@example.com --to "${rcpts%,}" \
    --header "Subject: mailbrake demo (limit)" --body "Some recipients are over the limit." \
    >"$work/swaks-limit.log" 2>&1 || true
accepted=$(grep -c '^<-  250 2.1.5' "$work/swaks-limit.log" || true)
refused=$(grep -c '450 4.7.1 Recipient limit reached' "$work/swaks-limit.log" || true)
echo "demo: limit: $accepted recipients accepted, $refused refused; mailbrake answered the rest:"
grep -m 1 '450 4.7.1 Recipient limit reached' "$work/swaks-limit.log" | sed 's/^<\*\* */    /'
echo "demo: the operator's view (mailbrake sender show $key):"
"$bin" sender show "$key" -c "$work/mailbrake.toml" | sed 's/^/    /'

echo
echo "demo: the upstream MTA (smtp-sink) stored $(find "$work/dump" -type f 2>/dev/null | wc -l) message(s):"
for f in "$work"/dump/*; do
    [[ -f "$f" ]] && grep -a "^Subject:" "$f" | sed 's/^/    /'
done
echo
echo "demo: mailbrake's log:"
sed 's/^/    /' "$work/mailbrake.log"

if $once; then
    [[ $ok -eq 3 && $accepted -eq 9 && $refused -eq 3 ]]
    exit
fi
echo
echo "demo: mailbrake is running (plain 127.0.0.1:2525, STARTTLS :2587, implicit TLS :2465); Ctrl-C stops it."
echo "      try: swaks --server 127.0.0.1:2587 --tls --from a@example.com --to b@example.net"
tail -f -n 0 "$work/mailbrake.log" &
pids+=($!)
wait "$mb"
