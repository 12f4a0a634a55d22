#!/bin/sh
# Starts redis-server with the ACL users of redis-users.acl and their passwords from files.
#
# redis-users.acl has one "user <name> <rules>" line per user, without passwords. For every
# user but `default` this script reads the password from $REDIS_SECRETS_DIR/<name>-password
# (one line) and writes "user <name> on #<sha256 of the password> <rules>" to an ACL file, so
# no plain-text password is stored anywhere but the Secret. The arguments are passed on to
# redis-server, followed by --aclfile. Used by k8s/app/redis.yaml and compose.yaml; the rules
# and rotation are explained in docs/security.md, "ACL users".
set -eu
rules="${REDIS_ACL_RULES:-/etc/redis-acl/redis-users.acl}"
secrets="${REDIS_SECRETS_DIR:-/etc/redis-auth}"
out="${REDIS_ACL_FILE:-/tmp/redis-users.acl}"

umask 077
: > "$out"
while read -r keyword name rest || [ -n "$keyword" ]; do
    [ "$keyword" = user ] || continue
    if [ "$name" = default ]; then
        echo "user default $rest" >> "$out"
        continue
    fi
    password_file="$secrets/$name-password"
    if [ ! -s "$password_file" ]; then
        echo "redis-start: no password for ACL user $name: $password_file is missing or empty" >&2
        exit 1
    fi
    hash="$(tr -d '\r\n' < "$password_file" | sha256sum | cut -d ' ' -f 1)"
    echo "user $name on #$hash $rest" >> "$out"
done < "$rules"
grep -q '^user default off' "$out" || {
    echo "redis-start: $rules must switch the default user off (user default off …)" >&2
    exit 1
}

# The official image's entrypoint drops root privileges to the redis user first (Compose);
# in Kubernetes the container already runs as that user.
if [ "$(id -u)" = 0 ]; then
    chown redis "$out"
fi
if command -v docker-entrypoint.sh > /dev/null; then
    exec docker-entrypoint.sh redis-server "$@" --aclfile "$out"
fi
exec redis-server "$@" --aclfile "$out"
