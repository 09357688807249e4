#!/bin/sh
# DEVELOPMENT CERTIFICATES ONLY. Never use them on a real server: the
# private keys are published in this repository.
#
# Regenerates the development CA and the server certificates used by the
# tests, the example federation configs and the demo:
#   sh certs/generate.sh
# Needs openssl. Certificates are valid for 10 years from generation.
#
# The certificates that tests must see refused can be made on their own,
# with the existing CA, leaving every other file as it is:
#   sh certs/generate.sh expired       # expired.b.test.pem (+ -key.pem)
#   sh certs/generate.sh unknown-ca    # unknown-ca.b.test.pem (+ -key.pem)
set -eu
cd "$(dirname "$0")"

days=3650

# A new ECDSA P-256 key in PKCS#8, the form every TLS library reads.
new_key() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.tmp"
  openssl pkcs8 -topk8 -nocrypt -in "$1.tmp" -out "$1"
  rm "$1.tmp"
}

# The extensions of a server certificate for one DNS name.
server_ext() {
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s\n' "$1"
}

# expired.b.test.pem: issued by the development CA for b.test, but valid
# only on 1 January 2020. OpenSSL 3.0 (Debian 12) has no -not_before /
# -not_after for `openssl x509 -req`, so it is signed with `openssl ca`,
# whose -startdate / -enddate take any dates, from a throwaway CA setup.
expired() {
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  new_key expired.b.test-key.pem
  openssl req -new -key expired.b.test-key.pem -subj "/CN=b.test" -out "$tmp/req.csr"
  server_ext b.test > "$tmp/ext"
  : > "$tmp/index.txt"
  openssl rand -hex 16 > "$tmp/serial"
  printf '%s\n' \
    '[ca]' 'default_ca = throwaway' \
    '[throwaway]' \
    "database = $tmp/index.txt" "new_certs_dir = $tmp" "serial = $tmp/serial" \
    'default_md = sha256' 'policy = any_name' 'unique_subject = no' \
    '[any_name]' 'commonName = supplied' > "$tmp/ca.cnf"
  openssl ca -batch -notext -config "$tmp/ca.cnf" -cert ca.pem -keyfile ca-key.pem \
    -startdate 200101000000Z -enddate 200102000000Z \
    -extfile "$tmp/ext" -in "$tmp/req.csr" -out expired.b.test.pem
}

# unknown-ca.b.test.pem: valid now and for b.test, but issued by a CA of
# its own that nothing trusts (its key is thrown away).
unknown_ca() {
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  new_key "$tmp/ca-key.pem"
  openssl req -x509 -new -key "$tmp/ca-key.pem" -sha256 -days "$days" \
    -subj "/CN=unknown CA (not the wspd development CA)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$tmp/ca.pem"
  new_key unknown-ca.b.test-key.pem
  openssl req -new -key unknown-ca.b.test-key.pem -subj "/CN=b.test" -out "$tmp/req.csr"
  server_ext b.test > "$tmp/ext"
  openssl x509 -req -in "$tmp/req.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 -extfile "$tmp/ext" \
    -out unknown-ca.b.test.pem
}

case "${1:-all}" in
  expired) expired; exit 0 ;;
  unknown-ca) unknown_ca; exit 0 ;;
  all) ;;
  *) echo "usage: sh certs/generate.sh [expired|unknown-ca]" >&2; exit 2 ;;
esac

openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days "$days" \
  -subj "/CN=wspd development CA (DO NOT TRUST)" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.pem

# name: the file name; then the DNS names the certificate is valid for.
issue() {
  name=$1; shift
  san=""
  for d in "$@"; do san="${san:+$san,}DNS:$d"; done
  [ "$name" = localhost ] && san="$san,IP:127.0.0.1,IP:::1"
  openssl ecparam -name prime256v1 -genkey -noout -out "$name-key.pem.tmp"
  # PKCS#8, the form every TLS library reads.
  openssl pkcs8 -topk8 -nocrypt -in "$name-key.pem.tmp" -out "$name-key.pem"
  rm "$name-key.pem.tmp"
  openssl req -new -key "$name-key.pem" -subj "/CN=$1" -out "$name.csr"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days "$days" -sha256 -extfile "$name.ext" -out "$name.pem"
  rm "$name.csr" "$name.ext"
}

issue localhost localhost
issue a.test a.test
issue b.test b.test
issue c.test c.test
# Valid only for a host name that an SRV record may point at, never for a
# domain: a link to b.test must refuse it.
issue wsp-host.test wsp-host.test
rm -f ca.srl
# Each in a subshell: each removes its own temporary folder on exit.
(expired)
(unknown_ca)
