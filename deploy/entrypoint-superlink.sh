#!/usr/bin/env bash
# Start the fedveil SuperLink (Fleet, Control and Runtime APIs on one HTTPS port) with TLS and
# SuperNode authentication. The ServerApp runs as its subprocess in the same container/host.
# Used as the server container's entrypoint and by systemd/fedveil-superlink.service.
#
# Environment (defaults in brackets; systemd: /etc/fedveil/superlink.env):
#   FEDVEIL_CERT_DIR   ca.crt, superlink.pem, superlink.key (0600) from deploy/certs.sh [/etc/fedveil/certs]
#   FEDVEIL_HOST       interface to listen on [0.0.0.0]
#   FEDVEIL_PORT       the one port of all three APIs [8000]
#   FEDVEIL_STATE_DIR  SuperLink database (registered nodes, runs) [/var/lib/fedveil/superlink]
#   FEDVEIL_HE_DIR     the server's CKKS public context (he.key_dir of the run config); checked when set
set -euo pipefail

die() { echo "entrypoint-superlink: $*" >&2; exit 2; }

certs="${FEDVEIL_CERT_DIR:-/etc/fedveil/certs}"
host="${FEDVEIL_HOST:-0.0.0.0}"
port="${FEDVEIL_PORT:-8000}"
state="${FEDVEIL_STATE_DIR:-/var/lib/fedveil/superlink}"

for f in ca.crt superlink.pem superlink.key; do
    [[ -f "$certs/$f" ]] || die "$certs/$f does not exist (create it with deploy/certs.sh)"
done
mode="$(stat -c %a "$certs/superlink.key")"
[[ "$mode" =~ ^[0-7]00$ ]] || die "$certs/superlink.key has mode $mode; it must be 0600"
[[ ! -e "$certs/ca.key" ]] || echo "entrypoint-superlink: warning: $certs/ca.key should not live on the SuperLink host" >&2
if [[ -n "${FEDVEIL_HE_DIR:-}" ]]; then
    [[ -f "$FEDVEIL_HE_DIR/public.ctx" ]] || die "$FEDVEIL_HE_DIR/public.ctx does not exist (deploy/keys.sh, server/)"
    [[ ! -e "$FEDVEIL_HE_DIR/secret.ctx" ]] || die "$FEDVEIL_HE_DIR holds secret.ctx; the server must only get public.ctx"
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "FEDVEIL_PORT must be a port number, got '$port'"
mkdir -p "$state"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec flower-superlink --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/superlink.pem" \
    --ssl-keyfile "$certs/superlink.key" --enable-supernode-auth --disable-runtime-dependency-installation \
    --host "$host" --port "$port" --database "$state/state.db"
