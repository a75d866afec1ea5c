#!/usr/bin/env bash
# CKKS key material for encrypted aggregation (fedveil keys init), split by who may hold what.
#
#   deploy/keys.sh [--out DIR] [--profile compact|conservative]
#
# Layout under DIR (default ./he-keys), every file 0600, every directory 0700:
#   secret.ctx public.ctx manifest.json    the full key set, as written by `fedveil keys init`
#   server/public.ctx server/manifest.json the SuperLink host's copy: run config he.key_dir = this directory
#   client/secret.ctx client/manifest.json what every SuperNode gets: --node-config he-secret-context=.../secret.ctx
#
# The server must never receive secret.ctx (its loader refuses a context that holds a secret key).
# The manifest carries the key fingerprint and the sha256 of both contexts; the loaders check the
# sha256 when a manifest sits next to a key file. Existing keys are never overwritten.
set -euo pipefail
umask 077

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "keys.sh: $*" >&2; exit 2; }

out="he-keys"
profile="compact"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$profile" == compact || "$profile" == conservative ]] || die "--profile '$profile' is not allowed; choose compact or conservative"

# The fedveil CLI: $FEDVEIL, else the one on PATH, else the repository's virtual environment.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fedveil="${FEDVEIL:-}"
if [[ -z "$fedveil" ]]; then
    if command -v fedveil >/dev/null; then fedveil="fedveil"; else fedveil="$here/../.venv/bin/fedveil"; fi
fi
[[ -x "$fedveil" ]] || command -v "$fedveil" >/dev/null || die "fedveil CLI not found (set FEDVEIL=/path/to/fedveil)"

for f in secret.ctx public.ctx manifest.json; do
    [[ ! -e "$out/$f" ]] || die "$out/$f exists; refusing to overwrite keys (rotation: EDGE_NODE_GUIDE.md)"
done
"$fedveil" keys init --out "$out" --profile "$profile" >/dev/null

install -d -m 700 "$out/server" "$out/client"
install -m 600 "$out/public.ctx" "$out/manifest.json" "$out/server/"
install -m 600 "$out/secret.ctx" "$out/manifest.json" "$out/client/"

fingerprint="$(sed -n 's/.*"key_fingerprint": *"\([0-9a-f]*\)".*/\1/p' "$out/manifest.json")"
echo "wrote CKKS keys ($profile) to $out; key fingerprint $fingerprint"
echo "  server: $out/server (he.key_dir)   clients: $out/client/secret.ctx (he-secret-context)"
