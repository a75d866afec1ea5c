#!/usr/bin/env bash
# Start one fedveil SuperNode (edge client) with TLS and SuperNode authentication.
# Used as the GPU container's entrypoint and by systemd/fedveil-supernode.service.
#
# Environment (defaults in brackets; systemd: /etc/fedveil/supernode.env):
#   FEDVEIL_SUPERLINK      host:port of the SuperLink's Fleet API (required), e.g. link.example.org:8000
#   FEDVEIL_PARTITION_ID   this node's client index, 0..clients-1 (required); must be unique in the federation
#   FEDVEIL_DATA_PATH      the node's private records, .txt/.jsonl/.csv [/var/lib/fedveil/data/records.jsonl]
#   FEDVEIL_DEVICE         auto, cpu or cuda [auto]
#   FEDVEIL_CA             CA certificate that signed the SuperLink's certificate [/etc/fedveil/certs/ca.crt]
#   FEDVEIL_NODE_KEY       the node's ECDSA private key (its .pub is registered) [/etc/fedveil/node/node.key]
#   FEDVEIL_HE_SECRET      the clients' CKKS secret context; empty when the federation runs without HE
#                          [/etc/fedveil/he/secret.ctx]
#   FEDVEIL_RUNTIME_PORT   local port of the node's Runtime API (ClientApp <-> SuperNode) [9094]
#   FEDVEIL_NODE_DIR       the node's own state: DP ledger, last update, audit-coin key, teacher and local
#                          student; created 0700, must persist across restarts [/var/lib/fedveil/state]
#   FEDVEIL_EXTRA_NODE_CONFIG  more key=value pairs for --node-config, space-separated []
set -euo pipefail

die() { echo "entrypoint-supernode: $*" >&2; exit 2; }
need_private() {  # a private file must exist and be readable by this user only
    local what="$1" path="$2" mode
    [[ -f "$path" ]] || die "$what $path does not exist"
    [[ -r "$path" ]] || die "$what $path is not readable by $(id -un)"
    mode="$(stat -c %a "$path")"
    [[ "$mode" =~ ^[0-7]00$ ]] || die "$what $path has mode $mode; private files must be 0600 (chmod 600 $path)"
}

superlink="${FEDVEIL_SUPERLINK:?FEDVEIL_SUPERLINK is required, e.g. link.example.org:8000}"
partition="${FEDVEIL_PARTITION_ID:?FEDVEIL_PARTITION_ID is required (the client index of this node)}"
data="${FEDVEIL_DATA_PATH:-/var/lib/fedveil/data/records.jsonl}"
device="${FEDVEIL_DEVICE:-auto}"
ca="${FEDVEIL_CA:-/etc/fedveil/certs/ca.crt}"
key="${FEDVEIL_NODE_KEY:-/etc/fedveil/node/node.key}"
secret="${FEDVEIL_HE_SECRET-/etc/fedveil/he/secret.ctx}"
port="${FEDVEIL_RUNTIME_PORT:-9094}"
export FEDVEIL_NODE_DIR="${FEDVEIL_NODE_DIR:-/var/lib/fedveil/state}"  # read by the ClientApp (fedveil/files.py)

[[ "$partition" =~ ^[0-9]+$ ]] || die "FEDVEIL_PARTITION_ID must be a non-negative integer, got '$partition'"
[[ "$device" == auto || "$device" == cpu || "$device" == cuda ]] || die "FEDVEIL_DEVICE must be auto, cpu or cuda, got '$device'"
[[ "$port" =~ ^[0-9]+$ ]] || die "FEDVEIL_RUNTIME_PORT must be a port number, got '$port'"
[[ "$data$secret" != *'"'* ]] || die "paths must not contain double quotes"
[[ -f "$ca" ]] || die "CA certificate $ca does not exist"
[[ -f "$data" && -r "$data" ]] || die "data file $data does not exist or is not readable (FEDVEIL_DATA_PATH)"
need_private "node key" "$key"
mkdir -p -m 700 "$FEDVEIL_NODE_DIR" || die "cannot create the node's state directory $FEDVEIL_NODE_DIR (FEDVEIL_NODE_DIR)"
[[ -w "$FEDVEIL_NODE_DIR" ]] || die "the node's state directory $FEDVEIL_NODE_DIR is not writable by $(id -un)"
node_config="partition-id=$partition data-path=\"$data\" device=\"$device\""
if [[ -n "$secret" ]]; then
    need_private "HE secret context" "$secret"
    node_config="$node_config he-secret-context=\"$secret\""
fi
node_config="$node_config ${FEDVEIL_EXTRA_NODE_CONFIG:-}"

# Offline nodes: no telemetry, no update check, never `uv sync` a run's dependencies.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec flower-supernode --superlink "$superlink" --root-certificates "$ca" --auth-supernode-private-key "$key" \
    --node-config "$node_config" --host 127.0.0.1 --port "$port"
