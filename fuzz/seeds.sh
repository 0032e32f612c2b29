#!/usr/bin/env bash
# Writes the hand-made seeds of the fuzz corpus (fuzz/corpus/<target>/): durations and policy
# inputs as text, certificates and keys made by OpenSSL. Inputs the fuzzers find are added next to
# them. The certificates are judged at a fixed instant (mtls_operator::fuzzing::now, 2030-01-01),
# so the long-lived ones are made valid for 20 years and the "expired" one for a day.
#
#   fuzz/seeds.sh     (re)write the seeds; existing fuzzer-found inputs are kept
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus=$here/corpus
mkdir -p "$corpus"/{duration,policy,pem,ca}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sep=$'\n%%\n'

i=0
for d in 90s 10m 1h30m 8760h 1.5h 250ms 0s -1h 1d "" 2562047h 2562048h 99999999999999h \
  94522879700260684295381835.999999999999h 0.1ns 1.0000000000000000000001h 1h0.5m µs 5µs .5h 1.h \
  1e3s ١h " 1h" "1h " 1H 3600 1h1h1h1h1h1h1h1h; do
  printf '%s' "$d" > "$corpus/duration/seed-$i"
  i=$((i + 1))
done

p() { local name=$1; shift; printf '%s\n' "$@" > "$corpus/policy/$name"; }
p own-services shop web svc:web svc:api dns:web.shop.svc dns:api.shop.svc.cluster.local
p other-namespace shop web dns:payments.victim dns:payments.victim.svc dns:payments.victim.svc.cluster.local
p kubernetes-api shop web dns:kubernetes.default.svc
p wildcard-matching-a-pattern shop web 'allow:*.corp.example' 'dns:*.corp.example'
p pattern-apex shop web 'allow:*.corp.example' dns:corp.example
p pattern-suffix-trick shop web 'allow:*.corp.example' dns:evilcorp.example
p bare-star-pattern shop web 'allow:*' 'allow:*.' dns:anything.example
p dotted-service-name shop web svc:payments.victim
p empty-service-name shop web svc:
p service-account-path shop web sa:x/ns/kube-system/sa/admin
p service-account-empty shop web sa:
p upper-case shop web dns:WEB.SHOP.SVC
p long-label shop web 'allow:*.corp.example' "dns:$(printf 'a%.0s' {1..64}).corp.example"
p trailing-dot shop web dns:web.shop.svc.
p ip-ranges shop web range:10.1.0.0/16 ip:10.1.2.3 ip:10.2.0.1
p ipv4-mapped-ipv6 shop web range:10.1.0.0/16 ip:::ffff:10.1.2.3
p bad-ranges shop web range:bogus range:10.1.2.3/33 ip:10.1.2.3
p bogus-selector shop web 'expr:team|Bogus|a'
p in-without-values shop web 'expr:team|In'
p selector-matches shop web sel:mtls=on label:mtls=on svc:web
p selector-misses shop web sel:mtls=on label:mtls=off svc:web
p cluster-domain-overlap shop web cd:corp.example 'allow:*.corp.example' dns:web.shop.svc.corp.example dns:web.victim.svc.corp.example
p trust-domain shop web td:example.org sa:payments

openssl_ca() { # name subject extra-args...
  local name=$1 subj=$2; shift 2
  openssl req -x509 -nodes -keyout "$tmp/$name.key" -out "$tmp/$name.crt" -subj "$subj" "$@" 2>/dev/null
}
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
openssl_ca p256 /CN=seed "${ec[@]}" -days 7300
openssl_ca other /CN=seed "${ec[@]}" -days 7300
openssl_ca rsa2048 /CN=seed -newkey rsa:2048 -days 7300
openssl_ca rsa1024 /CN=seed -newkey rsa:1024 -days 7300
openssl_ca ed25519 /CN=seed -newkey ed25519 -days 7300
openssl_ca leaf /CN=seed "${ec[@]}" -days 7300 -addext basicConstraints=critical,CA:FALSE
openssl_ca nosign /CN=seed "${ec[@]}" -days 7300 -addext keyUsage=critical,digitalSignature
openssl_ca expired /CN=seed "${ec[@]}" -days 1
openssl_ca repeated-dc /DC=example/DC=com/CN=Int "${ec[@]}" -days 7300
openssl_ca printable-country /C=US/O=Acme/CN=Int "${ec[@]}" -days 7300
openssl_ca multi-valued-rdn /O=Acme/CN=Int+OU=Ops "${ec[@]}" -days 7300 -multivalue-rdn
# An intermediate under a root: tls.crt = intermediate then root, ca.crt = root.
openssl req -nodes "${ec[@]}" -keyout "$tmp/int.key" -out "$tmp/int.csr" -subj /CN=seed-intermediate 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' > "$tmp/ca.ext"
openssl x509 -req -in "$tmp/int.csr" -CA "$tmp/p256.crt" -CAkey "$tmp/p256.key" -CAcreateserial -days 7000 \
  -extfile "$tmp/ca.ext" -out "$tmp/int.crt" 2>/dev/null

c() { cat "$tmp/$1"; }
write() { # name parts...
  local name=$1; shift
  local out="" first=1
  for part in "$@"; do
    if [ $first = 1 ]; then out=$part; first=0; else out+=$sep$part; fi
  done
  for t in pem ca; do printf '%s' "$out" > "$corpus/$t/openssl-$name"; done
}
write p256-ca "$(c p256.crt)" "$(c p256.key)"
write rsa2048-ca "$(c rsa2048.crt)" "$(c rsa2048.key)"
write ed25519-ca "$(c ed25519.crt)" "$(c ed25519.key)"
write rsa1024-ca "$(c rsa1024.crt)" "$(c rsa1024.key)"
write not-a-ca "$(c leaf.crt)" "$(c leaf.key)"
write no-cert-sign "$(c nosign.crt)" "$(c nosign.key)"
write expired "$(c expired.crt)" "$(c expired.key)"
write key-mismatch "$(c p256.crt)" "$(c other.key)"
write repeated-dc "$(c repeated-dc.crt)" "$(c repeated-dc.key)"
write printable-country "$(c printable-country.crt)" "$(c printable-country.key)"
write multi-valued-rdn "$(c multi-valued-rdn.crt)" "$(c multi-valued-rdn.key)"
write intermediate-chain "$(c int.crt)$(c p256.crt)" "$(c int.key)" "$(c p256.crt)"
write broken-chain "$(c p256.crt)$(c other.crt)" "$(c p256.key)"
write truncated "$(head -c 300 "$tmp/p256.crt")" "$(c p256.key)"
write key-in-tls-crt "$(c p256.key)" "$(c p256.key)"
write garbage "not a certificate" "garbage"
write empty "" ""
echo "seeds written to $corpus"
