#!/bin/sh
# Container entry point: make the data dirs writable, drop root, then exec the command
# (so it becomes PID 1 and receives docker's SIGTERM directly).
#
# Which user runs the command:
#   - started with --user / `user:` (not root): that user, nothing to fix;
#   - /logs or /models bind-mounted from a host directory owned by a non-root user:
#     that uid:gid (the first found, /logs first), so what MiniVault writes on the
#     host belongs to whoever owns the directory;
#   - otherwise (mounts owned by root, e.g. created by docker for a missing source,
#     or no mounts): the image's `minivault` user.
# Then every writable data dir still owned by root is chown-ed to that user (a read-only
# mount, like the api's /models, is left alone).
set -eu

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

if [ "$run_uid" = "$(id -u minivault)" ]; then
    export HOME=/home/minivault
else
    export HOME=/tmp
fi
exec setpriv --reuid="$run_uid" --regid="$run_gid" --clear-groups --no-new-privs -- "$@"
