#!/usr/bin/env bash
# Run .ci/run in a clean Debian 12 root, to show that it installs everything
# the tests need: the machine CI usually runs on has packages installed by
# hand, and a green run there can hide a missing install step.
#
# As root on a Debian 12 host:
#
#     .ci/fresh.sh [--reuse] [--keep] [DIR]
#
# DIR (default /var/tmp/mailbrake-fresh) is made afresh with debootstrap
# (minbase: essential packages and apt, nothing else) from deb.debian.org;
# an existing DIR is refused unless --reuse says to use it as it is. This
# machine's Rust toolchain (the active one, with rustup) is copied in, but
# no crates and no build output: cargo downloads the crates from crates.io
# and builds everything from scratch, cargo-fuzz included. The committed
# tree of the checkout this script is in (HEAD, not the working tree) is
# cloned to /src/mailbrake in the root, and `bash .ci/run` runs there
# through chroot as root, with /proc, /sys, /dev and a tmpfs /run mounted
# for the network-namespace tests. A root this run made is deleted
# afterwards unless --keep is given; a reused one is left. Exits with
# .ci/run's status. Takes a quarter of an hour on two cores and about 9 GB
# of disk; .ci/run does not run it.
set -euo pipefail

reuse=0
keep=0
made=0
root=
while (($#)); do
    case "$1" in
    --reuse) reuse=1 ;;
    --keep) keep=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "fresh.sh: unknown option $1" >&2
        exit 2
        ;;
    *) root=$1 ;;
    esac
    shift
done
root=${root:-/var/tmp/mailbrake-fresh}
root=$(realpath -m "$root")
[[ $root != / ]] || { echo "fresh.sh: refusing / as the root" >&2; exit 2; }

[[ $(id -u) == 0 ]] || { echo "fresh.sh: must run as root (debootstrap, chroot, mounts)" >&2; exit 2; }
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
rev=$(git -C "$repo" rev-parse HEAD)
suite=bookworm
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
started=$(date +%s)

# The host's Rust toolchain: the one rustup picks in the checkout, and where
# rustup keeps it.
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
toolchain=$(cd "$repo" && rustup show active-toolchain | cut -d' ' -f1)
[[ -d $rustup_home/toolchains/$toolchain ]] ||
    { echo "fresh.sh: toolchain $toolchain not found in $rustup_home" >&2; exit 2; }

# (a) debootstrap on the host.
if ! command -v debootstrap >/dev/null; then
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

# Everything mounted in the root, innermost last; the trap unmounts them in
# reverse order, whatever happens.
mounts=()
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    local status=$? proc i
    set +e
    # Whatever .ci/run left running in the root (a daemon a test started and
    # did not stop) would keep its mounts busy: stop those processes by id.
    for proc in /proc/[0-9]*; do
        [[ $(readlink "$proc/root" 2>/dev/null) == "$root" ]] && kill -9 "${proc#/proc/}" 2>/dev/null
    done
    # Network namespaces a test left behind are bind mounts under /run/netns.
    if [[ -d $root/run/netns ]]; then
        for i in "$root"/run/netns/*; do
            [[ -e $i ]] && umount "$i" 2>/dev/null
        done
    fi
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -R "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" ||
            echo "fresh.sh: could not unmount ${mounts[i]}" >&2
    done
    if ((made && !keep)) &&
        ! awk -v r="$root" '$5 == r || index($5, r "/") == 1 { m = 1 } END { exit !m }' /proc/self/mountinfo; then
        echo "fresh.sh: the root took $(du -sh "$root" | cut -f1); removing it"
        rm -rf --one-file-system "$root"
    fi
    echo "fresh.sh: whole run $(($(date +%s) - started))s, exit $status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# (b) A minimal bookworm root from Debian's mirror, the security suite and
# updates included, as this machine's apt has them.
if [[ -e $root ]]; then
    ((reuse)) || { echo "fresh.sh: $root exists; remove it or pass --reuse" >&2; exit 2; }
    [[ -x $root/usr/bin/apt-get ]] || { echo "fresh.sh: $root is not a Debian root" >&2; exit 2; }
else
    echo "fresh.sh: debootstrap $suite into $root"
    made=1
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
        { tail -20 "$root.debootstrap.log" >&2; exit 1; }
    rm -f "$root.debootstrap.log"
fi
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
# No daemon started by a package's postinst (redis-server, dovecot): in a
# chroot it would run in this host's network namespace, and outlive the run.
# The tests start their own.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# What the Debian installer writes; debootstrap leaves /etc/hosts out.
[[ -e $root/etc/hosts ]] || cat >"$root/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$(hostname)
::1	localhost ip6-localhost ip6-loopback
EOF
# This machine's network, as the root will use it: its resolver, and the
# certificate authorities it added locally (a TLS-intercepting proxy on the
# way to crates.io needs its CA trusted). ca-certificates, which .ci/run
# installs, adds them to the root's store.
cp /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    [[ ! -x $root/usr/sbin/update-ca-certificates ]] ||
        chroot "$root" update-ca-certificates >/dev/null
fi

# (c) The toolchain: rustup's settings and the active toolchain, and the
# rustup proxies from cargo's bin (cargo, rustc, rustfmt, cargo-clippy...);
# not the tools cargo installed there (cargo-fuzz: .ci/run installs it), not
# the registry, not any target directory.
mkdir -p "$root/root/.rustup/toolchains" "$root/root/.cargo/bin"
cp "$rustup_home/settings.toml" "$root/root/.rustup/"
[[ -d $root/root/.rustup/toolchains/$toolchain ]] ||
    cp -a "$rustup_home/toolchains/$toolchain" "$root/root/.rustup/toolchains/"
for tool in "$cargo_home"/bin/*; do
    if [[ $(basename "$tool") == rustup ]] || cmp -s "$tool" "$cargo_home/bin/rustup"; then
        cp -a "$tool" "$root/root/.cargo/bin/"
    fi
done
rm -rf "$root/root/.cargo/registry" "$root/root/.cargo/git"

# (d) The committed tree, at this checkout's HEAD.
rm -rf "$root/src/mailbrake"
git clone -q --no-hardlinks "$repo" "$root/src/mailbrake"
git -C "$root/src/mailbrake" checkout -q --detach "$rev"

# (e) The root as a mount point, and the kernel's file systems: /proc, /sys,
# /dev and /dev/pts for the tests' namespaces and terminals, a /dev/shm of
# its own, and /run as a tmpfs (`ip netns` bind-mounts namespaces under
# /run/netns).
mount_in() { # TARGET MOUNT-ARGS...
    local target=${root}${1%/}
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    mounts+=("$target")
}
# The root itself first, bound onto itself: `ip netns exec` makes / a
# slave mount in its own mount namespace, which fails (EINVAL) when / is not
# a mount point.
mount_in / --bind "$root"
mount_in /proc -t proc proc
mount_in /sys -t sysfs sysfs
mount_in /dev --bind /dev
mount_in /dev/pts --bind /dev/pts
mount_in /dev/shm -t tmpfs -o mode=1777,nosuid,nodev tmpfs
mount_in /run -t tmpfs -o mode=755,nosuid tmpfs
mkdir -p "$root/run/lock"

# (f) .ci/run as root in the root, with a clean environment but for the
# toolchain's.
echo "fresh.sh: .ci/run in $root at $rev"
ci_started=$(date +%s)
ci_status=0
chroot "$root" /usr/bin/env -i \
    HOME=/root USER=root LOGNAME=root TERM="${TERM:-dumb}" \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
    ${FUZZ_SECONDS:+FUZZ_SECONDS=$FUZZ_SECONDS} \
    /bin/bash -c 'cd /src/mailbrake && bash .ci/run' || ci_status=$?
echo "fresh.sh: .ci/run took $(($(date +%s) - ci_started))s, exit $ci_status"

# (g) the trap unmounts; (h) .ci/run's status is ours.
exit "$ci_status"
