#!/bin/sh
# Container entry point: make the data dirs writable, drop root, then exec the command
# (so it becomes PID 1 and receives docker's SIGTERM directly).
#
# Which user runs the command:
#   - started with --user / `user:` (not root): that user, nothing to fix;
#   - a writable data dir (/logs, or /models for the init step) owned by a non-root
#     user, i.e. a host directory bind-mounted as is: that same uid:gid, so the files
#     MiniVault writes on the host belong to whoever owns the directory;
#   - otherwise (dirs owned by root, e.g. created by docker for a missing bind-mount
#     source): the image's `minivault` user, after chown-ing those dirs to it.
# A dir mounted read-only (the api's /models) is left alone.
set -eu

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

data_dirs="/logs /models"  # the image's volumes; created in the image, owned by minivault
run_uid=$(id -u minivault)
run_gid=$(id -g minivault)

writable() {
    # as root `test -w` is true unless the mount is read-only
    [ -d "$1" ] && [ -w "$1" ]
}

for dir in $data_dirs; do
    if writable "$dir" && [ "$(stat -c %u "$dir")" != 0 ]; then
        run_uid=$(stat -c %u "$dir")
        run_gid=$(stat -c %g "$dir")
        break
    fi
done

for dir in $data_dirs; do
    if writable "$dir" && [ "$(stat -c %u "$dir")" = 0 ]; then
        chown "$run_uid:$run_gid" "$dir"
    fi
done
# a log file left by an earlier root-run container would refuse appends
if [ -f /logs/log.jsonl ] && [ -w /logs ] && [ "$(stat -c %u /logs/log.jsonl)" = 0 ]; then
    chown "$run_uid:$run_gid" /logs/log.jsonl
fi

if [ "$run_uid" = "$(id -u minivault)" ]; then
    export HOME=/home/minivault
else
    export HOME=/tmp
fi
exec setpriv --reuid="$run_uid" --regid="$run_gid" --clear-groups --no-new-privs -- "$@"
