#!/usr/bin/env bash
# The throughput reference runs of docs/benchmarks.md: the gateway against the simulated
# accelerator (fast_upstream.py --accelerator, 40 ms + 0.4 ms per input), batching and serial,
# every row of every answer checked (--verify). Loopback only; about six minutes.
# ACCELERATOR=gpu runs the same cells against a real forward pass on CUDA instead
# (fast_upstream.py --accelerator gpu|gpu-serial; needs torch and a GPU).
#
#   bash scripts/throughput_runs.sh [OUT_DIR]      (default: ./throughput-runs)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-throughput-runs}
mkdir -p "$out"
duration=${DURATION:-12}
slice=${SLICE:-3}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

fetch() {
    python -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
}

wait_for() {
    for _ in $(seq 1 1200); do
        fetch "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

# run NAME ACCELERATOR KIND CELLS(c:b,...)
run() {
    local name=$1 accelerator=$2 kind=$3 cells=$4
    local up_port=18601 gw_port=18600
    python scripts/fast_upstream.py --port $up_port --model sim-1024 \
        --accelerator "$accelerator" --fixed-ms 40 --per-input-ms 0.4 >"$out/$name.upstream.log" &
    pids+=($!)
    cat >"$out/$name.yaml" <<EOF
server: {host: 127.0.0.1, port: $gw_port, playground: false}
backends:
  sim:
    kind: $kind
    base_url: http://127.0.0.1:$up_port
    models: {sim-1024: {}}
EOF
    python -m embedding_gateway.cli serve --config "$out/$name.yaml" >"$out/$name.gateway.log" 2>&1 &
    local gateway=$!
    pids+=($gateway)
    wait_for "http://127.0.0.1:$up_port/health"
    wait_for "http://127.0.0.1:$gw_port/health"
    for cell in ${cells//,/ }; do
        python scripts/benchmark.py overhead --no-progress --verify --encoding-format base64 \
            --gateway "http://127.0.0.1:$gw_port" --upstream "http://127.0.0.1:$up_port" \
            --models sim-1024 --concurrency "${cell%:*}" --batch "${cell#*:}" \
            --duration "$duration" --slice "$slice" --gateway-pid "$gateway" \
            --json "$out/$name.c${cell%:*}b${cell#*:}.json" | grep -E '^c=' | sed "s/^/$name /"
    done
    fetch "http://127.0.0.1:$gw_port/metrics" | grep -E '^embedding_gateway_(upstream_calls_total|upstream_call_(inputs|requests)_(sum|count)|upstream_concurrency_limit|batch_wait_seconds_(sum|count))' >"$out/$name.metrics.txt"
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
}

if [ "${ACCELERATOR:-simulated}" = gpu ]; then
    run gpu-vllm gpu vllm "1:1,64:1,32:32,128:32"
    run gpu-openai gpu openai "64:1,32:32"
    run gpu-serial-openai gpu-serial openai "64:1,32:32"
else
    run batching-vllm batching vllm "1:1,64:1,32:32,128:32"
    run batching-openai batching openai "1:1,64:1,32:32"
    run serial-openai serial openai "1:1,64:1,32:32"
fi
