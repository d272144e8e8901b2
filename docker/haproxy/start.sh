#!/bin/sh
# Start HAProxy with the limits taken from MiniVault's own settings.
set -eu
# A replica admits MINIVAULT_WORKERS running + MINIVAULT_MAX_QUEUE waiting requests and
# refuses the next with 429; HAProxy 2.6 cannot retry a 429, so it never sends a replica more
# than that at once: the excess waits in HAProxy's queue for the first replica with room.
MINIVAULT_LB_MAXCONN=$(( ${MINIVAULT_WORKERS:-1} + ${MINIVAULT_MAX_QUEUE:-16} ))
MINIVAULT_LB_QUEUE_TIMEOUT_S=${MINIVAULT_LB_QUEUE_TIMEOUT_S:-10}
MINIVAULT_LB_BACKEND=${MINIVAULT_LB_BACKEND:-replica}
export MINIVAULT_LB_MAXCONN MINIVAULT_LB_QUEUE_TIMEOUT_S MINIVAULT_LB_BACKEND
haproxy -c -q -f /etc/haproxy/haproxy.cfg
exec haproxy -W -db -f /etc/haproxy/haproxy.cfg
