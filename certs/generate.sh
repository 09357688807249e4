#!/bin/sh
# DEVELOPMENT CERTIFICATES ONLY. Never use them on a real server: the
# private keys are published in this repository.
#
# Regenerates the development CA and the server certificates used by the
# tests, the example federation configs and the demo:
#   sh certs/generate.sh
# Needs openssl. Certificates are valid for 10 years from generation.
set -eu
cd "$(dirname "$0")"

days=3650
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
