#!/usr/bin/env bash
# Make a Docker engine available: install docker.io and busybox-static if missing,
# start dockerd if no engine answers, and wait until `docker info` succeeds.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    dockerd >/tmp/dockerd.log 2>&1 &
fi

for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "docker engine ready"
        exit 0
    fi
    sleep 1
done
echo "docker engine did not start; last lines of /tmp/dockerd.log:" >&2
tail -n 30 /tmp/dockerd.log >&2 || true
exit 1
