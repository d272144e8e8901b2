#!/bin/sh
# Builder stage: install MiniVault's dependencies (from pyproject.toml) into the venv.
#
# ctransformers' wheel bundles x86-64 libraries only, so on any other architecture
# (or with CTRANSFORMERS_FROM_SOURCE=1) it is compiled from its sdist: CMake and Ninja
# come from PyPI through pip's isolated build, the C/C++ compiler from Debian. Both stay
# in this stage; the runtime stage copies only the venv.
set -eu

arch=${TARGETARCH:-$(dpkg --print-architecture)}  # the legacy builder does not set TARGETARCH
from_source=${CTRANSFORMERS_FROM_SOURCE:-auto}
if [ "$from_source" = auto ]; then
    if [ "$arch" = amd64 ]; then from_source=0; else from_source=1; fi
fi

python - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
open("/tmp/requirements.txt", "w").write("\n".join(project["project"]["dependencies"]) + "\n")
open("/tmp/build-requirements.txt", "w").write("\n".join(project["build-system"]["requires"]) + "\n")
PY

# the project itself is built later without build isolation, with its declared build backend
pip install -r /tmp/build-requirements.txt

if [ "$from_source" = 1 ]; then
    echo "install-deps: building ctransformers from source for $arch" >&2
    apt-get update
    apt-get install -y --no-install-recommends g++ make
    pip install --no-binary ctransformers -r /tmp/requirements.txt
else
    pip install -r /tmp/requirements.txt
fi
