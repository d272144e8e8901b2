#!/bin/sh
# Builder stage: remove from the venv what the runtime never uses.
set -eu
venv=${1:-/opt/venv}
site=$(echo "$venv"/lib/python3*/site-packages)

# ctransformers ships one library per platform and CPU level; on Linux it loads
# lib/<avx2|avx|basic>/libctransformers.so (picked by CPU flags at run time, so all three
# stay) or lib/local/ when built from source. Never loaded here: the CUDA build (MiniVault
# asks for no GPU), and the Windows .dll and macOS .dylib files.
ct=$site/ctransformers/lib
rm -rf "$ct/cuda" "$ct/metal"
find "$ct" \( -name '*.dll' -o -name '*.dylib' \) -delete

# Packaging tools: nothing installs into the venv at run time.
"$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null || true

# numpy's own test suite (numpy.test()); nothing imports it.
find "$site/numpy" -depth -type d -name tests -exec rm -rf {} +
