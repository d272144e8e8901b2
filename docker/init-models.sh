#!/bin/sh
# compose's init step: make sure the models dir holds a model, then exit 0.
# Usage: init-models.sh DOWNLOAD-COMMAND...   (e.g. minivault download distilgpt2 --quant q4_0)
#
# The download runs only when nothing is there yet: a model already present (a previous
# download, a user's own *.bin, or the file MINIVAULT_MODEL names) means no Hub access
# at all, so `docker compose up` also works offline once a model is in place.
set -eu

models=${MINIVAULT_MODELS_DIR:-/models}
model=${MINIVAULT_MODEL:-}

if [ -n "$model" ]; then
    if [ -f "$model" ]; then
        echo "minivault: MINIVAULT_MODEL=$model is present; nothing to download" >&2
        exit 0
    fi
else
    for found in "$models"/*.bin "$models"/*/model.bin; do
        if [ -f "$found" ]; then
            echo "minivault: $found is present; nothing to download" >&2
            exit 0
        fi
    done
fi

echo "minivault: no model in $models yet; running: $*" >&2
"$@"

if [ -n "$model" ] && [ ! -f "$model" ]; then
    echo "minivault: MINIVAULT_MODEL=$model still does not exist after the download;" \
        "set it to the path printed above (or leave it empty to use the one model in $models)" >&2
    exit 1
fi
