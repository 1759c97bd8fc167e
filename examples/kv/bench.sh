#!/usr/bin/env bash
# Measures the kv example: three release-built nodes on loopback, each with its own
# FileStorage directory (fsync on), redis-benchmark against the leader (and then a follower,
# whose requests are forwarded), and the proposals per fsync from INFO over each run.
#
#   apt-get install -y redis-tools          # redis-cli, redis-benchmark
#   examples/kv/bench.sh                    # REQUESTS=20000 CLIENTS=50 TESTS=set,get
#
# Ports: peers on 7101-7103, clients on 6391-6393 (PEER_PORT and CLIENT_PORT move them).
set -euo pipefail
cd "$(dirname "$0")/../.."

requests=${REQUESTS:-20000}
clients=${CLIENTS:-50}
tests=${TESTS:-set,get}
peer_port=${PEER_PORT:-7101}
client_port=${CLIENT_PORT:-6391}
for tool in redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install -y redis-tools" >&2; exit 1; }
done

# BINARY=path/to/kv compares another build (nothing is built then); NODE_ARGS adds options
# to every node (NODE_ARGS="--lease-ticks 20": leader leases).
binary=${BINARY:-target/release/examples/kv}
[ -n "${BINARY:-}" ] || cargo build --quiet --release --example kv --features net
data=$(mktemp -d)
peers="1=127.0.0.1:$peer_port,2=127.0.0.1:$((peer_port + 1)),3=127.0.0.1:$((peer_port + 2))"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT
for id in 1 2 3; do
    "$binary" --id "$id" --peers "$peers" --client "127.0.0.1:$((client_port + id - 1))" \
        --data "$data/node-$id" ${NODE_ARGS:-} 2>"$data/node-$id.log" &
    pids+=("$!")
done

field() { redis-cli -p "$1" info | tr -d '\r' | sed -n "s/^$2://p"; }

leader=""
for _ in $(seq 100); do
    for id in 1 2 3; do
        port=$((client_port + id - 1))
        if [ "$(field "$port" role 2>/dev/null)" = leader ]; then leader=$port; fi
    done
    [ -n "$leader" ] && break
    sleep 0.1
done
[ -n "$leader" ] || { echo "no leader elected" >&2; cat "$data"/*.log >&2; exit 1; }
follower=$((leader == client_port ? client_port + 1 : client_port))

run() { # name port
    local syncs_before applied_before syncs applied
    syncs_before=$(field "$leader" storage_syncs)
    applied_before=$(field "$leader" commands_applied)
    echo "== $1 (port $2): redis-benchmark -t $tests -n $requests -c $clients"
    redis-benchmark -p "$2" -t "$tests" -n "$requests" -c "$clients" -q 2>&1 | tr '\r' '\n' | grep 'requests per second' || true
    syncs=$(( $(field "$leader" storage_syncs) - syncs_before ))
    applied=$(( $(field "$leader" commands_applied) - applied_before ))
    echo "   leader: $applied commands applied, $syncs fsyncs: $(awk "BEGIN { printf \"%.1f\", $applied / ($syncs > 0 ? $syncs : 1) }") proposals per fsync;" \
        "driver: $(field "$leader" driver_batches_per_storage_write) ready batches per storage write (since start)"
}
run "leader" "$leader"
run "follower (forwarded)" "$follower"
