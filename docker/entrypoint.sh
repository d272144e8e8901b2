#!/bin/sh
# Container entry point: name the replica, make the data dirs writable, drop root, then exec the command
# (so it becomes PID 1 and receives docker's SIGTERM directly).
#
# Which user runs the command:
#   - started as a non-root user (the image's default, USER 10001:10001, or --user /
#     `user:` / Kubernetes' runAsUser): that user, nothing to fix;
#   - /logs or /models bind-mounted from a host directory owned by a non-root user:
#     that uid:gid (the first found, /logs first), so what MiniVault writes on the
#     host belongs to whoever owns the directory;
#   - otherwise (mounts owned by root, e.g. created by docker for a missing source,
#     or no mounts): the image's `minivault` user.
# Then every writable data dir still owned by root is chown-ed to that user (a read-only
# mount, like the api's /models, is left alone).
set -eu

# Several replicas of one service (compose --scale, a Kubernetes Deployment): with
# MINIVAULT_REPLICA=auto this one is named by its host name, and `{replica}` in
# MINIVAULT_LOG_FILE becomes that name, so no two replicas ever write one log file.
if [ "${MINIVAULT_REPLICA:-}" = auto ]; then
    MINIVAULT_REPLICA=$(cat /proc/sys/kernel/hostname)
    export MINIVAULT_REPLICA
fi
case ${MINIVAULT_LOG_FILE:-} in
    *"{replica}"*)
        if [ -z "${MINIVAULT_REPLICA:-}" ]; then
            echo "minivault: MINIVAULT_LOG_FILE=$MINIVAULT_LOG_FILE names {replica}: set MINIVAULT_REPLICA (or auto)" >&2
            exit 64
        fi
        MINIVAULT_LOG_FILE=$(printf '%s\n' "$MINIVAULT_LOG_FILE" | sed "s|{replica}|$MINIVAULT_REPLICA|g")
        export MINIVAULT_LOG_FILE
        ;;
esac

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

data_dirs="/logs /models"  # the volumes (created in the image, owned by minivault)
run_uid=$(id -u minivault)
run_gid=$(id -g minivault)

writable() {
    # as root `test -w` is true unless the mount is read-only
    [ -d "$1" ] && [ -w "$1" ]
}

for dir in $data_dirs; do
    if mountpoint -q "$dir" && [ "$(stat -c %u "$dir")" != 0 ]; then
        run_uid=$(stat -c %u "$dir")
        run_gid=$(stat -c %g "$dir")
        break
    fi
done

give() {
    chown "$run_uid:$run_gid" "$1" \
        || echo "minivault: warning: could not chown $1 to $run_uid:$run_gid; it may not be writable" >&2
}

for dir in $data_dirs; do
    if writable "$dir" && [ "$(stat -c %u "$dir")" = 0 ]; then
        give "$dir"
    fi
done
# a log file left by an earlier root-run container would refuse appends
if [ -f /logs/log.jsonl ] && [ -w /logs ] && [ "$(stat -c %u /logs/log.jsonl)" = 0 ]; then
    give /logs/log.jsonl
fi

# the Hub cache (a named volume in compose) must be writable by whoever downloads
hf=${HF_HOME:-}
if [ -n "$hf" ] && writable "$hf" && [ "$(stat -c %u "$hf")" != "$run_uid" ]; then
    chown -R "$run_uid:$run_gid" "$hf" \
        || echo "minivault: warning: could not chown $hf to $run_uid:$run_gid; downloads may fail" >&2
fi

if [ "$run_uid" = "$(id -u minivault)" ]; then
    export HOME=/home/minivault
else
    export HOME=/tmp
fi
exec setpriv --reuid="$run_uid" --regid="$run_gid" --clear-groups --no-new-privs -- "$@"
