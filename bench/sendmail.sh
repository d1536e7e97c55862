#!/usr/bin/env bash
# PHP's mail(), side by side: the same PHP loop of CALLS mail() calls, run
# as a non-root user (nobody, via setpriv) as a site's PHP would, with four
# sendmail_paths:
#
#   floor      `cat >/dev/null`: what every sendmail_path pays (PHP's popen,
#              /bin/sh, one exec), and nothing is sent
#   sink       `mailbrake sendmail` → mailbrake's Unix socket → smtp-sink
#              (accepts and discards): mailbrake's road alone
#   smtpd      `mailbrake sendmail` → mailbrake's Unix socket → a private
#              Postfix's smtpd, which queues (deliveries deferred)
#   postfix    Postfix's own `/usr/sbin/sendmail -t -i` → postdrop →
#              maildrop, which the same private Postfix's pickup queues
#
# and the start-up cost of each command: a bash loop of CALLS runs of
# /bin/true, `mailbrake sendmail -bp` and Postfix's `sendmail -bz`, each
# refusing the mode before doing any work (see startup_cmd below).
#
# Every run happens in a mount namespace of its own (unshare --mount) where
# the private Postfix's config directory is bind-mounted on /etc/postfix, as
# tests/side_door.rs does: Postfix's sendmail and its set-gid postdrop, run
# by a non-root user, read /etc/postfix/main.cf and take no -c. mailbrake's
# runs get the same wrapper, so both pay the same. The machine's
# /etc/postfix is never changed.
#
# Runs alternate (floor, sink, smtpd, postfix, floor, …), ROUNDS of each,
# and medians and ratios are printed as Markdown tables, with the CPU time
# per call of the commands mail() ran, of mailbrake and of the MTA (all of
# Postfix's daemons until its queue settled). After every run
# the script checks that each mail() returned true and that the MTA got
# CALLS messages (smtp-sink's counter; the files in Postfix's queue), waits
# for Postfix's queue manager to settle and empties the queue.
#
#   bash bench/sendmail.sh                 # 5 rounds of 1,000 calls
#   ROUNDS=3 CALLS=200 bash bench/sendmail.sh
#   LIMIT=1000000/1h bash bench/sendmail.sh   # every recipient counted
#
# Needs root (Postfix starts as root; setpriv, unshare, mount), Debian's
# postfix (smtp-sink, sendmail, postdrop, postsuper), php-cli and
# util-linux. Everything listens on 127.0.0.1 and Postfix relays nowhere:
# every transport is "nowhere" (Postfix's error(8) under another name), and
# it is deferred, so every message stays queued. MAILBRAKE_BIN skips the
# release build; it must be readable and executable by nobody.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
CALLS=${CALLS:-1000}
# mailbrake's [limits] default: never refusing during the benchmark. A rate
# ("1000000/1h") has every recipient counted, as a site's are.
LIMIT=${LIMIT:-unlimited}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

die() { echo "BENCH CANNOT RUN: $*" >&2; exit 1; }
fail() { echo "BENCH FAILED: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "it must run as root (Postfix starts as root; setpriv, unshare and mount need it), not uid $(id -u)"
for tool in /usr/sbin/postfix /usr/sbin/postconf /usr/sbin/postsuper /usr/sbin/sendmail /usr/sbin/postdrop \
    /usr/sbin/smtp-sink /usr/bin/php /usr/bin/setpriv /usr/bin/unshare /bin/mount /usr/bin/python3 /usr/bin/bc; do
    [[ -x $tool ]] || die "$tool is missing (apt-get install postfix php-cli util-linux mount python3 bc)"
done
[[ -d /etc/postfix ]] || die "no /etc/postfix to bind-mount the private config on (Debian package postfix)"
for user in nobody postfix; do
    id -u "$user" >/dev/null 2>&1 || die "no Unix user $user (the packages create it)"
done
unshare --mount --propagation private true 2>/dev/null || die "no mount namespace (unshare --mount needs CAP_SYS_ADMIN)"
[[ $ROUNDS -ge 1 && $CALLS -ge 1 ]] || die "ROUNDS and CALLS must be at least 1"

bin=${MAILBRAKE_BIN:-}
if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin=$root/target/release/mailbrake
fi
UID_SITE=$(id -u nobody)
GID_SITE=$(id -g nobody)
setpriv --reuid="$UID_SITE" --regid="$GID_SITE" --clear-groups test -x "$bin" ||
    die "$bin cannot be run by nobody (a checkout under /root cannot): set MAILBRAKE_BIN"

work=$(mktemp -d /tmp/mailbrake-bench-sendmail.XXXXXX)
chmod 0755 "$work"   # Postfix's daemons and the site's user must reach in
pids=()
postfix_started=""
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n $postfix_started ]]; then
        local master
        master=$(tr -d ' ' <"$work/pf/queue/pid/master.pid" 2>/dev/null || true)
        postfix -c "$work/pf/conf" stop >/dev/null 2>&1 || true
        # Its daemons exit after `stop` returns: wait for the master.
        for _ in $(seq 1 100); do
            [[ -n $master && -d /proc/$master ]] || break
            sleep 0.1
        done
    fi
    wait 2>/dev/null || true
    rm -rf "$work"
    [[ $rc -eq 0 ]] || echo "bench: failed (exit $rc); everything it started is stopped and $work removed" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SINK=$(port); SMTPD=$(port); ADMIN=$(port)

# === The private Postfix =====================================================
# Laid out as tests/common/postfix.rs does: conf/, queue/, data/, log/.
pf=$work/pf
mkdir -p "$pf/conf" "$pf/queue" "$pf/data" "$pf/log"
chmod 0755 "$pf"
chown postfix "$pf/data"
cat >"$pf/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
maillog_file = $pf/log/postfix.log
maillog_file_prefixes = $pf/log
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
# Every transport is "nowhere", Postfix's error(8) under another name
# (smtpd refuses recipients routed to error: or retry: at once), and
# deferred: every message stays in the deferred queue, where the bench
# counts it, and nothing is ever delivered.
default_transport = nowhere:never relays
relay_transport = nowhere:never relays
local_transport = nowhere:never delivers
defer_transports = nowhere
alias_maps =
alias_database =
biff = no
EOF
{
    cat <<'EOF'
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
nowhere unix - - n - - error
EOF
    echo "127.0.0.1:$SMTPD inet n - n - - smtpd"
} >"$pf/conf/master.cf"
postfix -c "$pf/conf" check
postfix_started=yes
postfix -c "$pf/conf" start >/dev/null 2>&1 || { cat "$pf/log/postfix.log" >&2; die "postfix did not start"; }

# === smtp-sink and mailbrake =================================================
smtp-sink -u nobody -c 127.0.0.1:"$SINK" 1024 >"$work/sink.out" 2>&1 &
pids+=($!)
SINK_PID=$!

mkdir -p "$work/run"
chmod 0755 "$work/run"
cat >"$work/mailbrake.toml" <<EOF
[admin]
bind = "127.0.0.1:$ADMIN"
[server]
hostname = "mb.bench"
[state]
dir = "$work/state"
[limits]
default = "$LIMIT"
rotation = "off"
lock_after_refusals = 0
[protect]
connections_per_ip = "off"
[[listener]]
name = "to-sink"
bind = "unix:$work/run/sink.sock"
upstream = "127.0.0.1:$SINK"
[[listener]]
name = "to-smtpd"
bind = "unix:$work/run/smtpd.sock"
upstream = "127.0.0.1:$SMTPD"
EOF
MAILBRAKE_LOG=${MAILBRAKE_LOG:-info} "$bin" run -c "$work/mailbrake.toml" 2>"$work/mailbrake.log" &
pids+=($!)
MB_PID=$!

# Wait (bounded) until everything answers.
for _ in $(seq 1 100); do
    [[ -S $work/run/sink.sock && -S $work/run/smtpd.sock ]] &&
        (exec 3<>/dev/tcp/127.0.0.1/"$SINK") 2>/dev/null &&
        (exec 3<>/dev/tcp/127.0.0.1/"$SMTPD") 2>/dev/null && break
    sleep 0.1
done
[[ -S $work/run/smtpd.sock ]] || { cat "$work/mailbrake.log" >&2; die "mailbrake did not start"; }
(exec 3<>/dev/tcp/127.0.0.1/"$SMTPD") 2>/dev/null || { cat "$pf/log/postfix.log" >&2; die "Postfix's smtpd does not answer"; }

# === Running as the site =====================================================
# `as_site CMD…`: CMD as nobody, with only PATH in its environment, in a
# mount namespace of its own where /etc/postfix is the private config.
as_site() {
    # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
    unshare --mount --propagation private -- /bin/sh -c 'mount --bind "$0" /etc/postfix && exec "$@"' "$pf/conf" \
        /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        /usr/bin/setpriv --reuid="$UID_SITE" --regid="$GID_SITE" --clear-groups "$@"
}

# The PHP loop: CALLS mail() calls, timed inside PHP (its own start-up is
# not counted); prints "CALLS-THAT-RETURNED-TRUE SECONDS CHILDREN-CPU-SECONDS",
# the last the CPU time of what mail() ran (sh, the sendmail command and
# what it runs: postdrop).
# shellcheck disable=SC2016 # PHP's variables
php_loop='$n = (int)$argv[1]; $ok = 0; $t0 = hrtime(true);
for ($i = 1; $i <= $n; $i++) {
    if (mail("rcpt-$i@example.net", "bench $i", "Hello $i,\nthis is a benchmark.\n", "From: site@example.test")) $ok++;
}
$t = (hrtime(true) - $t0) / 1e9;
$r = getrusage(1);
printf("%d %.6f %.6f\n", $ok, $t, $r["ru_utime.tv_sec"] + $r["ru_stime.tv_sec"] + ($r["ru_utime.tv_usec"] + $r["ru_stime.tv_usec"]) / 1e6);'

sendmail_path_for() {
    case $1 in
        floor) echo "cat >/dev/null" ;;
        sink) echo "$bin sendmail --socket $work/run/sink.sock -t -i" ;;
        smtpd) echo "$bin sendmail --socket $work/run/smtpd.sock -t -i" ;;
        postfix) echo "/usr/sbin/sendmail -t -i" ;;
    esac
}

# Messages in Postfix's queue (incoming, active, deferred, hold), and in
# its maildrop (written by postdrop, not yet picked up).
queued() { find "$pf/queue/incoming" "$pf/queue/active" "$pf/queue/deferred" "$pf/queue/hold" -type f | wc -l; }
maildrop() { find "$pf/queue/maildrop" -type f | wc -l; }
deferred() { find "$pf/queue/deferred" -type f | wc -l; }
# smtp-sink's message counter (its last "mesg=N").
sunk() {
    local n
    n=$(tr '\r' '\n' <"$work/sink.out" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
    echo "${n:-0}"
}

# `until_true SECONDS CMD…`: polls CMD every 10 ms; false after SECONDS.
until_true() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@"; do
        [[ $(date +%s) -lt $deadline ]] || return 1
        sleep 0.01
    done
}
all_queued() { [[ $(maildrop) -eq 0 && $(queued) -eq $CALLS ]]; }
queue_empty() { [[ $(queued) -eq 0 ]]; }
all_deferred() { [[ $(deferred) -eq $CALLS && $(queued) -eq $CALLS ]]; }
sink_has() { [[ $(sunk) -ge $1 ]]; }

# CPU seconds (user + system) used so far by process PID and its threads.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz}' "/proc/$1/stat"; }
# CPU seconds used so far by Postfix's master and all its daemons: the
# live ones' own, and the exited ones' that the master has reaped.
postfix_cpu() {
    local master
    master=$(tr -d ' ' <"$pf/queue/pid/master.pid")
    # (processes come and go while cat reads: a vanished one is no error)
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v m="$master" -v hz="$(getconf CLK_TCK)" '
        { pid = $1; sub(/^.*\) /, "") }      # then $2 is the ppid, $12.. utime stime cutime cstime
        pid == m || $2 == m { s += $12 + $13 + $14 + $15 }
        END { printf "%.3f", s / hz }'
}

sunk_total=0
# One PHP loop with sendmail_path NAME: its wall seconds to the file NAME,
# the CPU seconds of the commands mail() ran to cpu-cmd-NAME, mailbrake's
# to cpu-mb-NAME, the MTA's (smtp-sink's, or all of Postfix's daemons'
# until the queue has settled) to cpu-mta-NAME; for smtpd and postfix also
# the seconds until all CALLS are in the queue (picked up) to queued-NAME.
# Fails loudly unless every mail() returned true and the MTA got every
# message.
run_php() {
    local name=$1 out ok secs cmd_cpu mb0 mta0
    mb0=$(cpu "$MB_PID")
    case $name in
        sink) mta0=$(cpu "$SINK_PID") ;;
        *) mta0=$(postfix_cpu) ;;
    esac
    out=$(as_site /usr/bin/php -d "sendmail_path=$(sendmail_path_for "$name")" -r "$php_loop" "$CALLS")
    read -r ok secs cmd_cpu <<<"$out"
    [[ $ok -eq $CALLS ]] || fail "$name: only $ok of $CALLS mail() calls returned true"
    echo "$secs" >>"$work/$name"
    echo "$cmd_cpu" >>"$work/cpu-cmd-$name"
    case $name in
        floor)
            echo "$(postfix_cpu) - $mta0" | bc >>"$work/cpu-mta-$name"
            ;;
        sink)
            sunk_total=$((sunk_total + CALLS))
            until_true 20 sink_has "$sunk_total" || fail "sink: smtp-sink counted $(sunk) messages, expected $sunk_total"
            echo "$(cpu "$SINK_PID") - $mta0" | bc >>"$work/cpu-mta-$name"
            ;;
        smtpd | postfix)
            # The PHP loop's start, in PHP's clock, is not ours: measure the
            # wait after it from its end instead.
            local end waited
            end=$(date +%s.%N)
            until_true 60 all_queued || fail "$name: $(queued) messages in Postfix's queue, $(maildrop) in the maildrop; expected $CALLS"
            waited=$(echo "$(date +%s.%N) - $end" | bc)
            echo "$secs + $waited" | bc >>"$work/queued-$name"
            until_true 60 all_deferred || fail "$name: $(deferred) of $CALLS messages deferred"
            echo "$(postfix_cpu) - $mta0" | bc >>"$work/cpu-mta-$name"
            postsuper -c "$pf/conf" -d ALL >/dev/null 2>&1
            until_true 20 queue_empty || fail "the queue did not empty"
            ;;
    esac
    echo "$(cpu "$MB_PID") - $mb0" | bc >>"$work/cpu-mb-$name"
}

# Start-up: CALLS runs of a command from a bash loop, as the site, in the
# same wrapper; wall seconds to startup-NAME. The exit status is checked.
STARTUP=(true mailbrake postfix)
startup_cmd() {
    case $1 in
        true) echo "/bin/true" ;;
        # A usage error: parsed and refused before any connection.
        mailbrake) echo "$bin sendmail -bp" ;;
        # The same for Postfix's sendmail: it reads main.cf, then refuses
        # the unknown -b mode ("fatal: unsupported: -bz", exit 75).
        postfix) echo "/usr/sbin/sendmail -bz" ;;
    esac
}
startup_status() { case $1 in true) echo 0 ;; mailbrake) echo 64 ;; postfix) echo 75 ;; esac; }
# shellcheck disable=SC2016 # the inner bash's
startup_loop='n=$1; want=$2; shift 2
"$@" </dev/null >/dev/null 2>&1; rc=$?
[ "$rc" -eq "$want" ] || { echo "exit $rc, expected $want: $*" >&2; exit 1; }
t0=$EPOCHREALTIME
for ((i = 0; i < n; i++)); do "$@" </dev/null >/dev/null 2>&1; done
t1=$EPOCHREALTIME
echo "$t1 - $t0" | bc'
run_startup() {
    local name=$1
    # shellcheck disable=SC2046
    as_site /bin/bash -c "$startup_loop" _ "$CALLS" "$(startup_status "$name")" $(startup_cmd "$name") \
        >>"$work/startup-$name" || fail "start-up of $name"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms_per_call() { echo "$1 * 1000 / $CALLS" | bc -l; }

for f in floor sink smtpd postfix queued-smtpd queued-postfix startup-true startup-mailbrake startup-postfix; do
    : >"$work/$f"
done
for name in floor sink smtpd postfix; do
    for f in cpu-cmd cpu-mb cpu-mta; do : >"$work/$f-$name"; done
done
for r in $(seq 1 "$ROUNDS"); do
    for name in floor sink smtpd postfix; do run_php "$name"; done
    for name in "${STARTUP[@]}"; do run_startup "$name"; done
    last() { printf '%.3f' "$(tail -1 "$work/$1")"; }
    echo "round $r/$ROUNDS: floor $(last floor) s, sink $(last sink) s, smtpd $(last smtpd) s," \
        "postfix $(last postfix) s (all queued $(last queued-postfix) s);" \
        "start-up true $(last startup-true) s, mailbrake $(last startup-mailbrake) s, postfix $(last startup-postfix) s" >&2
done

# === The tables ==============================================================
all() { xargs printf '%.3f\n' <"$work/$1" | paste -sd' ' | sed 's/ /, /g'; }
f=$(median <"$work/floor"); s=$(median <"$work/sink"); d=$(median <"$work/smtpd"); p=$(median <"$work/postfix")
qd=$(median <"$work/queued-smtpd"); qp=$(median <"$work/queued-postfix")
echo "| \`sendmail_path\`, $CALLS mail() calls as nobody | wall (s) | per call (ms) | per call above the floor (ms) | wall / Postfix's | until all $CALLS are in Postfix's queue (s) |"
echo "|---|--:|--:|--:|--:|--:|"
row() { # label wall [queued]
    printf '| %s | %.2f | %.2f | %.2f | %.2f | %s |\n' "$1" "$2" "$(ms_per_call "$2")" \
        "$(echo "($2 - $f) * 1000 / $CALLS" | bc -l)" "$(echo "$2 / $p" | bc -l)" "${3:-}"
}
row "\`cat >/dev/null\` (the floor: popen, sh, exec)" "$f"
row "\`mailbrake sendmail\` → mailbrake → smtp-sink" "$s"
row "\`mailbrake sendmail\` → mailbrake → Postfix smtpd (queued)" "$d" "$(printf %.2f "$qd")"
row "Postfix \`sendmail\` → postdrop (maildrop; pickup queues)" "$p" "$(printf %.2f "$qp")"
echo
echo "| CPU per call (ms), medians | commands mail() ran (sh, sendmail, postdrop) | mailbrake | MTA (smtp-sink, or all Postfix's daemons until the queue settled) | total |"
echo "|---|--:|--:|--:|--:|"
crow() { # label name
    local c m t
    c=$(median <"$work/cpu-cmd-$2"); m=$(median <"$work/cpu-mb-$2"); t=$(median <"$work/cpu-mta-$2")
    printf '| %s | %.2f | %.2f | %.2f | %.2f |\n' "$1" "$(ms_per_call "$c")" "$(ms_per_call "$m")" "$(ms_per_call "$t")" \
        "$(ms_per_call "$(echo "$c + $m + $t" | bc)")"
}
crow "\`cat >/dev/null\`" floor
crow "\`mailbrake sendmail\` → smtp-sink" sink
crow "\`mailbrake sendmail\` → Postfix smtpd" smtpd
crow "Postfix \`sendmail\`" postfix
echo
t=$(median <"$work/startup-true"); m=$(median <"$work/startup-mailbrake"); q=$(median <"$work/startup-postfix")
echo "| start-up, $CALLS runs from a bash loop as nobody | per call (ms) | above \`/bin/true\` (ms) |"
echo "|---|--:|--:|"
srow() { printf '| %s | %.2f | %.2f |\n' "$1" "$(ms_per_call "$2")" "$(echo "($2 - $t) * 1000 / $CALLS" | bc -l)"; }
srow "\`/bin/true\`" "$t"
srow "\`mailbrake sendmail -bp\` (usage error, exit 64)" "$m"
srow "Postfix \`sendmail -bz\` (reads main.cf, unsupported mode, exit 75)" "$q"
echo
echo "All rounds (s): floor $(all floor); sink $(all sink); smtpd $(all smtpd); postfix $(all postfix);" \
    "postfix queued $(all queued-postfix); smtpd queued $(all queued-smtpd);" \
    "start-up true $(all startup-true); mailbrake $(all startup-mailbrake); postfix $(all startup-postfix)."
echo "$ROUNDS alternating rounds, medians of wall time; wall / Postfix's > 1 means slower than Postfix's own sendmail; mailbrake's limit $LIMIT."
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); Postfix $(postconf -c "$pf/conf" -h mail_version); $(php -r 'echo "PHP ", PHP_VERSION;'); $(date -u +%Y-%m-%d)."
# Nothing may have been refused: every mail() returned true, and the log
# agrees (limits are unlimited).
if grep -Eq "recipient refused|refused_by_limit=[1-9]|refused_by_upstream=[1-9]" "$work/mailbrake.log"; then
    echo "WARNING: mailbrake refused recipients during the benchmark:" >&2
    grep -Em3 "recipient refused|refused_by_limit=[1-9]|refused_by_upstream=[1-9]" "$work/mailbrake.log" >&2
fi
