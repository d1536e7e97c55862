#!/usr/bin/env bash
# Creates a self-signed development certificate for mailbrake's client leg:
#   certs/mail.pem  certificate (EC P-256, valid 825 days)
#   certs/mail.key  private key (PKCS#8, mode 600)
# for DNS:localhost, DNS:mail.localhost and IP:127.0.0.1.
# Existing files are kept unless --force is given. Needs the openssl CLI (1.1.1+).
set -euo pipefail

usage() {
    echo "usage: $0 [--force]" >&2
    echo "  creates mail.pem and mail.key next to this script; --force overwrites them" >&2
}

force=false
for arg in "$@"; do
    case "$arg" in
        --force) force=true ;;
        -h|--help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
done

command -v openssl >/dev/null || { echo "error: the openssl command is not installed" >&2; exit 1; }

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cert="$dir/mail.pem"
key="$dir/mail.key"

if ! $force; then
    if [[ -e "$cert" && -e "$key" ]]; then
        echo "$cert and $key already exist; use --force to replace them"
        exit 0
    elif [[ -e "$cert" || -e "$key" ]]; then
        echo "error: only one of $cert and $key exists; use --force to make a new pair" >&2
        exit 1
    fi
fi

# Generate into a private temporary directory next to the targets, then move
# both into place, so a failure never leaves half a pair behind.
umask 077
tmp="$(mktemp -d "$dir/.make-dev-cert.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if ! openssl req -x509 -new -nodes \
    -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$tmp/mail.key" -out "$tmp/mail.pem" \
    -days 825 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,DNS:mail.localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    2>"$tmp/openssl.log"; then
    echo "error: openssl could not create the certificate:" >&2
    cat "$tmp/openssl.log" >&2
    exit 1
fi

chmod 600 "$tmp/mail.key"
chmod 644 "$tmp/mail.pem"
mv -f "$tmp/mail.key" "$key"
mv -f "$tmp/mail.pem" "$cert"

echo "created $cert (self-signed, EC P-256) and $key (mode 600):"
openssl x509 -in "$cert" -noout -subject -ext subjectAltName -enddate -fingerprint -sha256 | sed 's/^/  /'
