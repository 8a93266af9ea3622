#!/usr/bin/env bash
#
# certs.sh - development certificates and token keys for the gateway, and
# a private CA and server certificate for PostgreSQL.
#
#   deploy/certs.sh [--kid KID]... DIR
#   deploy/certs.sh --pg DIR
#   deploy/certs.sh --internal DIR
#
# Creates in DIR (made if missing), with openssl:
#   tls-ecdsa.crt, tls-ecdsa.key   self-signed ECDSA P-256 certificate for
#                                  localhost, 127.0.0.1 and ::1
#   tls-rsa.crt, tls-rsa.key       the same with an RSA 2048 key; the gateway
#                                  serves both (GW_TLS_CERT_RSA), each client
#                                  the one it can verify
#   jwt/<kid>.pem, jwt/<kid>.pub.pem
#                                  ES256 (P-256) token signing key pairs, one
#                                  per --kid (default: one kid, "dev-1")
#   audit/signing.pem, audit/signing.pub.pem
#                                  the event service's ES256 (P-256) key that
#                                  signs audit checkpoints (always)
#
# With --pg, only these instead (deploy/pg with PG_TLS=1):
#   ca.crt, ca.key                 a private CA (P-256, valid 10 years) that
#                                  clients name in sslrootcert
#   server.crt, server.key         a server certificate the CA signed for
#                                  localhost, 127.0.0.1 and ::1 (825 days);
#                                  a client that asks for any other name
#                                  (sslmode=verify-full) is refused
#
# With --internal, only these instead (TLS between our own processes, both
# sides authenticated: TLS_CA, TLS_CERT, TLS_KEY of each process):
#   ca.crt, ca.key                 the platform's private CA (P-256, 10 years)
#   <name>.crt, <name>.key         for each of gateway profile account payment
#                                  event busd bench: a certificate the CA
#                                  signed for DNS:<name>, localhost,
#                                  127.0.0.1 and ::1, for use as server and
#                                  as client (825 days); clients ask for the
#                                  peer's process name
#
# Idempotent: a file that exists is kept, so running it again changes
# nothing and tokens signed earlier stay valid. Delete a file to remake it
# (a new CA makes a new server certificate too). Private keys are created
# mode 0600. Development only: the gateway's certificates are self-signed
# and valid for 825 days.
set -euo pipefail

usage() {
  sed -n '3,/^[^#]/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

kids=()
dir=
pg=0
internal=0
while (($#)); do
  case $1 in
    --rsa) ;; # the RSA pair is always made; kept for older callers
    --pg) pg=1 ;;
    --internal) internal=1 ;;
    --kid)
      [[ $# -ge 2 && $2 =~ ^[A-Za-z0-9._-]{1,63}$ ]] || { echo "certs.sh: --kid needs [A-Za-z0-9._-]{1,63}" >&2; exit 2; }
      kids+=("$2")
      shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
    *) [[ -z $dir ]] || { usage >&2; exit 2; }; dir=$1 ;;
  esac
  shift
done
[[ -n $dir ]] || { usage >&2; exit 2; }
command -v openssl >/dev/null || { echo "certs.sh: openssl not installed (Debian package openssl)" >&2; exit 1; }

umask 077

# SAN of every server certificate: the loopback names a client may ask for.
SAN="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

# make_ca SUBJECT: ca.key and ca.crt unless present.
make_ca() {
  if [[ -s $dir/ca.key && -s $dir/ca.crt ]]; then
    echo "kept    $dir/ca.crt" >&2
    return 0
  fi
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -out "$dir/ca.crt" -days 3650 \
    -subj "/CN=$1" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 0644 "$dir/ca.crt"
  # Certificates signed by a CA that is gone.
  for f in "$dir"/*.crt; do [[ $f == "$dir/ca.crt" ]] || rm -f "$f"; done
  echo "created $dir/ca.crt" >&2
}

# ca_signed NAME CN SAN EKU: NAME.key and NAME.crt, signed by the CA,
# unless present.
ca_signed() {
  local name=$1 cn=$2 san=$3 eku=$4
  if [[ -s $dir/$name.key && -s $dir/$name.crt ]]; then
    echo "kept    $dir/$name.crt" >&2
    return 0
  fi
  local ext
  ext=$(mktemp)
  printf '%s\n' "$san" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=$eku" >"$ext"
  [[ -s $dir/$name.key ]] ||
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$name.key" 2>/dev/null
  openssl req -new -key "$dir/$name.key" -subj "/CN=$cn" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 825 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$ext" "$dir/ca.srl"
  chmod 0644 "$dir/$name.crt"
  echo "created $dir/$name.crt" >&2
}

if ((pg)); then
  ((${#kids[@]} == 0)) || { echo "certs.sh: --kid does not go with --pg" >&2; exit 2; }
  mkdir -p "$dir"
  make_ca "paycore development PostgreSQL CA"
  ca_signed server localhost "$SAN" serverAuth
  exit 0
fi

if ((internal)); then
  ((${#kids[@]} == 0)) || { echo "certs.sh: --kid does not go with --internal" >&2; exit 2; }
  mkdir -p "$dir"
  make_ca "paycore development platform CA"
  for name in gateway profile account payment event busd bench; do
    ca_signed "$name" "$name" "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1,IP:::1" \
      serverAuth,clientAuth
  done
  exit 0
fi

mkdir -p "$dir/jwt" "$dir/audit"
((${#kids[@]})) || kids=(dev-1)

# self_signed NAME KEYGEN_ARGS...: NAME.key and NAME.crt unless present.
self_signed() {
  local name=$1
  shift
  if [[ -s $dir/$name.key && -s $dir/$name.crt ]]; then
    echo "kept    $dir/$name.crt" >&2
    return 0
  fi
  openssl genpkey "$@" -out "$dir/$name.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/$name.key" -out "$dir/$name.crt" -days 825 \
    -subj "/CN=localhost" -addext "$SAN" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null
  chmod 0644 "$dir/$name.crt"
  echo "created $dir/$name.crt" >&2
}

# ec_pair BASE: BASE.pem (a P-256 private key) and BASE.pub.pem unless present.
ec_pair() {
  local priv=$1.pem pub=$1.pub.pem
  if [[ -s $priv && -s $pub ]]; then
    echo "kept    $pub" >&2
    return 0
  fi
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$priv" 2>/dev/null
  openssl pkey -in "$priv" -pubout -out "$pub" 2>/dev/null
  chmod 0644 "$pub"
  echo "created $pub" >&2
}

self_signed tls-ecdsa -algorithm EC -pkeyopt ec_paramgen_curve:P-256
self_signed tls-rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048
for kid in "${kids[@]}"; do
  ec_pair "$dir/jwt/$kid"
done
ec_pair "$dir/audit/signing"
