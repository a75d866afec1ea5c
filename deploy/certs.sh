#!/usr/bin/env bash
# TLS and SuperNode-authentication material for a fedveil (Flower 1.42) federation.
#
#   deploy/certs.sh all  [--out DIR] [--nodes N] [--san SAN]... [--days D]   CA + SuperLink cert + N node keys
#   deploy/certs.sh ca   [--out DIR] [--days D]                              only the CA
#   deploy/certs.sh server [--out DIR] [--san SAN]... [--days D]             SuperLink cert signed by DIR/ca.*
#   deploy/certs.sh node NAME [--out DIR]                                    one node key pair (run it ON the node)
#
# Layout under DIR (default ./certs):
#   ca.key (0600) ca.crt                     the federation's private CA; ca.key never leaves the operator
#   superlink.key (0600) superlink.pem       SuperLink TLS key and certificate (SANs below)
#   nodes/NAME (0600) nodes/NAME.pub         ECDSA P-384 SuperNode auth keys (OpenSSH format)
#   manifest.txt                             SHA-256 fingerprints of everything above (public data)
#
# The SuperLink certificate always covers IP:127.0.0.1, IP:::1, DNS:localhost and DNS:$(hostname);
# add the addresses the nodes dial with --san, e.g. --san DNS:superlink.example.org --san IP:10.0.0.5.
# Existing private keys are never overwritten: delete them first to rotate (see EDGE_NODE_GUIDE.md).
set -euo pipefail
umask 077

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "certs.sh: $*" >&2; exit 2; }

cmd="${1:-}"
[[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help ]] && usage 0
shift
out="certs"
nodes=2
days=825
node_name=""
sans=()
if [[ "$cmd" == node ]]; then
    node_name="${1:-}"
    [[ -n "$node_name" && "$node_name" != -* ]] || die "node needs a NAME, e.g. certs.sh node edge-0"
    shift
fi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
        --san) sans+=("${2:?--san needs a value like DNS:host or IP:1.2.3.4}"); shift 2 ;;
        --days) days="${2:?--days needs a number}"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$nodes" =~ ^[0-9]+$ && "$nodes" -ge 1 && "$nodes" -le 1000 ]] || die "--nodes must be an integer in [1, 1000], got '$nodes'"
[[ "$days" =~ ^[0-9]+$ && "$days" -ge 1 ]] || die "--days must be a positive integer, got '$days'"
[[ "$node_name" =~ ^[A-Za-z0-9._-]*$ ]] || die "node NAME may contain only letters, digits, '.', '_' and '-'"
for s in "${sans[@]+"${sans[@]}"}"; do
    [[ "$s" =~ ^(DNS|IP):[A-Za-z0-9.:*-]+$ ]] || die "--san '$s' is not allowed; expected DNS:name or IP:address"
done
command -v openssl >/dev/null || die "openssl is required"
command -v ssh-keygen >/dev/null || die "ssh-keygen (openssh-client) is required"

mkdir -p "$out"
chmod 700 "$out"

refuse_existing() {
    for f in "$@"; do
        [[ ! -e "$f" ]] || die "$f exists; refusing to overwrite key material (move it away to rotate)"
    done
}

make_ca() {
    refuse_existing "$out/ca.key"
    openssl ecparam -name secp384r1 -genkey -noout -out "$out/ca.key"
    openssl req -x509 -new -sha384 -key "$out/ca.key" -days "$days" -subj "/CN=fedveil federation CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt" 2>/dev/null
    chmod 600 "$out/ca.key"
    chmod 644 "$out/ca.crt"
}

make_server() {
    [[ -f "$out/ca.key" && -f "$out/ca.crt" ]] || die "no CA in $out (run: certs.sh ca --out $out)"
    refuse_existing "$out/superlink.key"
    local host alt ext
    host="$(hostname 2>/dev/null || echo localhost)"
    alt="IP:127.0.0.1,IP:::1,DNS:localhost"
    [[ "$host" != localhost ]] && alt="$alt,DNS:$host"
    for s in "${sans[@]+"${sans[@]}"}"; do alt="$alt,$s"; done
    ext="$(mktemp)"
    # shellcheck disable=SC2064  # expand now: the file name is fixed
    trap "rm -f '$ext' '$out/superlink.csr'" RETURN
    printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$alt" >"$ext"
    openssl ecparam -name secp384r1 -genkey -noout -out "$out/superlink.key"
    chmod 600 "$out/superlink.key"
    openssl req -new -sha384 -key "$out/superlink.key" -subj "/CN=fedveil-superlink" -out "$out/superlink.csr"
    openssl x509 -req -sha384 -in "$out/superlink.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -days "$days" -extfile "$ext" -out "$out/superlink.pem" 2>/dev/null
    chmod 644 "$out/superlink.pem"
    rm -f "$out/ca.srl"
    openssl verify -CAfile "$out/ca.crt" "$out/superlink.pem" >/dev/null || die "superlink.pem does not verify against ca.crt"
}

make_node() {
    local name="$1"
    mkdir -p "$out/nodes"
    chmod 700 "$out/nodes"
    refuse_existing "$out/nodes/$name"
    # Flower's SuperNode authentication accepts ECDSA keys only.
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedveil-$name" -f "$out/nodes/$name"
    chmod 600 "$out/nodes/$name"
    chmod 644 "$out/nodes/$name.pub"
}

write_manifest() {
    local m="$out/manifest.txt"
    {
        echo "# fedveil federation key manifest ($(date -u +%Y-%m-%dT%H:%M:%SZ)); public data, safe to share"
        for f in ca.crt superlink.pem; do
            [[ -f "$out/$f" ]] || continue
            printf '%s\t%s\n' "$f" "$(openssl x509 -in "$out/$f" -noout -fingerprint -sha256 | cut -d= -f2)"
        done
        if [[ -f "$out/superlink.pem" ]]; then
            printf 'superlink.pem-san\t%s\n' "$(openssl x509 -in "$out/superlink.pem" -noout -ext subjectAltName | tail -n +2 | tr -d ' ')"
        fi
        if [[ -d "$out/nodes" ]]; then
            for pub in "$out"/nodes/*.pub; do
                [[ -f "$pub" ]] || continue
                printf 'nodes/%s\t%s\n' "$(basename "$pub")" "$(ssh-keygen -l -E sha256 -f "$pub" | cut -d' ' -f2)"
            done
        fi
    } >"$m"
    chmod 644 "$m"
}

case "$cmd" in
    all)
        make_ca
        make_server
        for ((i = 0; i < nodes; i++)); do make_node "node-$i"; done
        ;;
    ca) make_ca ;;
    server) make_server ;;
    node) make_node "$node_name" ;;
    *) die "unknown command '$cmd'; choose all, ca, server or node" ;;
esac
write_manifest
echo "wrote $cmd key material to $out (manifest: $out/manifest.txt)"
