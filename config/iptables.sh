#!/usr/bin/env bash
# Transparent mode on a hosting server, with iptables: every outgoing
# connection to port 25 or 587 opened on this machine is redirected to
# mailbrake's listeners on loopback, except the connections of the users
# below (mailbrake's own above all: its relayed connection to the original
# destination must go out, or it would come straight back — a loop).
#
#   config/iptables.sh            install, or bring up to date (idempotent)
#   config/iptables.sh --remove   remove everything this script installed
#   config/iptables.sh --status   show the installed rules
#
# What it installs, for IPv4 (iptables) and IPv6 (ip6tables), in table nat:
#   chain MAILBRAKE:  -m owner --uid-owner USER -j RETURN      one per excluded user
#                     -p tcp --dport 25  -j REDIRECT --to-ports $SMTP_PORT
#                     -p tcp --dport 587 -j REDIRECT --to-ports $SUBMISSION_PORT
#   chain OUTPUT:     -p tcp -j MAILBRAKE                      first rule
# The chain is (re)written in one iptables-restore transaction, so running the
# script again with other settings never leaves a moment without interception.
# A REDIRECT in OUTPUT sends IPv4 to 127.0.0.1 and IPv6 to ::1: mailbrake
# listens on both (see config/transparent.toml).
#
# Rules do not survive a reboot: run this at boot (e.g. ExecStartPre=+ in
# config/mailbrake.service, or netfilter-persistent save). While mailbrake is
# down the sites' mail fails (connection refused) rather than going out
# uncounted; remove the rules to let it flow.
#
# The equivalent for nftables is config/nftables.conf (use one, not both).
set -euo pipefail

# --- Settings (each can be overridden from the environment) -----------------

# Users whose connections are never redirected: names, uids, or uid ranges
# ("0-999"), separated by spaces. mailbrake's own user is required.
#
# The local MTA is the other candidate. A site calling /usr/sbin/sendmail
# (PHP's mail()) hands its message to Postfix, whose smtp client (user
# "postfix") then connects to the remote MX:
#   - excluded ("mailbrake postfix"), that mail goes out without mailbrake:
#     limit it in Postfix, or have the sites submit over SMTP to
#     127.0.0.1:25 instead — that connection is redirected, counted under the
#     site's own user, and relayed to Postfix;
#   - not excluded, every message Postfix sends is counted once more, all of
#     them under the one key of user postfix (add a [[vhost]] for it and
#     exempt or raise it), and Postfix sees mailbrake's replies.
# Root is not excluded by default: a root cron job that sends mail directly is
# counted like anyone else.
EXCLUDE_USERS=${MAILBRAKE_EXCLUDE_USERS:-"mailbrake"}

# mailbrake's listeners for redirected port-25 and port-587 connections: two
# listeners, since the two kinds of traffic want different policies (direct to
# the recipient's MX vs. submission with AUTH). Empty: that port is not
# redirected at all.
SMTP_PORT=${MAILBRAKE_SMTP_PORT-10025}
SUBMISSION_PORT=${MAILBRAKE_SUBMISSION_PORT-10587}

# Address families: "4 6", or "4" on a machine without IPv6.
FAMILIES=${MAILBRAKE_FAMILIES:-"4 6"}

# Name of the chain in table nat.
CHAIN=${MAILBRAKE_CHAIN:-MAILBRAKE}

# --- Implementation ----------------------------------------------------------

say() { echo "mailbrake-iptables: $*"; }
die() {
    echo "mailbrake-iptables: error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

mode=install
case "${1:-}" in
"") ;;
--remove) mode=remove ;;
--status) mode=status ;;
-h | --help)
    usage
    exit 0
    ;;
*) die "unknown argument '$1' (use --remove, --status or --help)" ;;
esac
[[ $# -le 1 ]] || die "one argument at most"

[[ $(id -u) -eq 0 ]] || die "must run as root (it changes the nat table)"
[[ $CHAIN =~ ^[A-Za-z0-9_-]{1,28}$ ]] || die "chain name '$CHAIN' is not a valid iptables chain name"

tools_for() { # FAMILY -> "iptables iptables-restore" or the ip6tables pair
    case "$1" in
    4) echo "iptables iptables-restore" ;;
    6) echo "ip6tables ip6tables-restore" ;;
    *) die "MAILBRAKE_FAMILIES: '$1' is neither 4 nor 6" ;;
    esac
}
[[ -n ${FAMILIES// /} ]] || die "MAILBRAKE_FAMILIES is empty"
for family in $FAMILIES; do
    [[ $family == 4 || $family == 6 ]] || die "MAILBRAKE_FAMILIES: '$family' is neither 4 nor 6"
    for tool in $(tools_for "$family"); do
        command -v "$tool" >/dev/null || die "'$tool' not found (Debian: apt-get install iptables), or set MAILBRAKE_FAMILIES"
    done
done

remove() { # TOOL
    local ipt=$1 removed=false
    while "$ipt" -w -t nat -C OUTPUT -p tcp -j "$CHAIN" 2>/dev/null; do
        "$ipt" -w -t nat -D OUTPUT -p tcp -j "$CHAIN"
        removed=true
    done
    if "$ipt" -w -t nat -S "$CHAIN" >/dev/null 2>&1; then
        "$ipt" -w -t nat -F "$CHAIN"
        "$ipt" -w -t nat -X "$CHAIN" || die "$ipt: chain $CHAIN is still referenced by a rule this script did not add; see '$ipt -t nat -S'"
        removed=true
    fi
    if $removed; then
        say "$ipt: removed chain $CHAIN and its jump from OUTPUT"
    else
        say "$ipt: nothing to remove (no chain $CHAIN)"
    fi
}

status() { # TOOL
    local ipt=$1
    if "$ipt" -w -t nat -S "$CHAIN" >/dev/null 2>&1; then
        say "$ipt: installed"
        "$ipt" -w -t nat -S OUTPUT | grep -- "-j $CHAIN\$" || say "$ipt: but OUTPUT does not jump to $CHAIN"
        "$ipt" -w -t nat -S "$CHAIN"
    else
        say "$ipt: not installed"
    fi
}

port_ok() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }

# Checked once for both families, before anything changes.
check_settings() {
    local u
    [[ -n ${EXCLUDE_USERS// /} ]] || die "MAILBRAKE_EXCLUDE_USERS is empty: mailbrake's own connections would be redirected to itself"
    for u in $EXCLUDE_USERS; do
        if [[ $u =~ ^[0-9]+(-[0-9]+)?$ ]]; then
            continue
        fi
        getent passwd "$u" >/dev/null || die "excluded user '$u' does not exist (create it first: useradd --system mailbrake), or give a uid"
    done
    [[ -n $SMTP_PORT || -n $SUBMISSION_PORT ]] || die "both MAILBRAKE_SMTP_PORT and MAILBRAKE_SUBMISSION_PORT are empty: nothing to redirect"
    [[ -z $SMTP_PORT ]] || port_ok "$SMTP_PORT" || die "MAILBRAKE_SMTP_PORT '$SMTP_PORT' is not a port"
    [[ -z $SUBMISSION_PORT ]] || port_ok "$SUBMISSION_PORT" || die "MAILBRAKE_SUBMISSION_PORT '$SUBMISSION_PORT' is not a port"
}

install() { # TOOL RESTORE
    local ipt=$1 restore=$2 u rules
    "$ipt" -w -t nat -S OUTPUT >/dev/null 2>&1 || die "$ipt: no nat table here (kernel module missing? IPv6 off? set MAILBRAKE_FAMILIES=4)"
    # With --noflush, declaring an existing user chain empties it; the whole
    # table changes at COMMIT, atomically.
    rules="*nat"$'\n'":$CHAIN - [0:0]"$'\n'
    for u in $EXCLUDE_USERS; do
        rules+="-A $CHAIN -m owner --uid-owner $u -j RETURN"$'\n'
    done
    [[ -z $SMTP_PORT ]] || rules+="-A $CHAIN -p tcp --dport 25 -j REDIRECT --to-ports $SMTP_PORT"$'\n'
    [[ -z $SUBMISSION_PORT ]] || rules+="-A $CHAIN -p tcp --dport 587 -j REDIRECT --to-ports $SUBMISSION_PORT"$'\n'
    if ! "$ipt" -w -t nat -C OUTPUT -p tcp -j "$CHAIN" 2>/dev/null; then
        rules+="-I OUTPUT 1 -p tcp -j $CHAIN"$'\n'
    fi
    rules+="COMMIT"$'\n'
    printf '%s' "$rules" | "$restore" -w --noflush || die "$restore refused the rules (above); nothing was changed"
    say "$ipt: installed: port 25 -> ${SMTP_PORT:-(not redirected)}, port 587 -> ${SUBMISSION_PORT:-(not redirected)}, except users: $EXCLUDE_USERS"
}

case $mode in
install)
    check_settings
    for family in $FAMILIES; do
        # shellcheck disable=SC2046
        install $(tools_for "$family")
    done
    ;;
remove)
    for family in $FAMILIES; do
        read -r ipt _ <<<"$(tools_for "$family")"
        remove "$ipt"
    done
    ;;
status)
    for family in $FAMILIES; do
        read -r ipt _ <<<"$(tools_for "$family")"
        status "$ipt"
    done
    ;;
esac
