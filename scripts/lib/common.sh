# Shared by scripts/run and scripts/test. Sourced, not executed.

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian packages that provide the given commands, when those commands are missing.
# Usage: ensure_command redis-server redis-server
ensure_command() {
  local command=$1 package=$2
  if command -v "$command" >/dev/null 2>&1; then return 0; fi
  echo "==> installing $package (provides $command)"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $command is missing and this is not a Debian-like system; install $package yourself" >&2
    return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  # The package may start a system redis on 6379; our scripts never rely on it.
}

# Waits until an HTTP URL answers 2xx, up to $2 seconds.
wait_http() {
  local url=$1 seconds=${2:-60} i
  for ((i = 0; i < seconds * 10; i++)); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
