#!/bin/sh
# Build llama-cpp-python (the llama.cpp engine, `minivault[llamacpp]`) from its source and install it.
#
#   sh docker/build-llamacpp.sh PYTHON [WHEEL_DIR]
#
# PyPI ships only its source: this compiles llama.cpp (minutes). The CPU kernels compiled in are
# chosen from this CPU's flags (LLAMACPP_CPU=auto), or set: avx512 (the extensions of llama.cpp's
# own zen4 build: AVX-512 F/VBMI/VNNI/BF16) or avx2 (any x86-64 of the last decade). Explicit flags,
# not -march=native: a native build dies of SIGILL on machines that report more than they run.
# AVX-512 measured on this project's benchmark machine: 1.90x the prompt speed of AVX2, 1.15x decode
# (README, Engines). With WHEEL_DIR, the wheel is kept under a key of version and flags, and reused:
# pip's own wheel cache would give back a build made with other flags.
set -eu

python=$1
wheel_dir=${2:-}
version=0.3.36
cpu=${LLAMACPP_CPU:-auto}

if [ "$cpu" = auto ]; then
    cpu=avx512  # unless one of its extensions is missing
    flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
    for f in avx512f avx512vbmi avx512_vnni avx512_bf16; do
        case " $flags " in *" $f "*) ;; *) cpu=avx2 ;; esac
    done
fi
args="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON"
case "$cpu" in
    avx512) args="$args -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" ;;
    avx2) ;;
    *) echo "build-llamacpp: LLAMACPP_CPU is auto, avx512 or avx2, not '$cpu'" >&2; exit 2 ;;
esac
args="$args -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
echo "build-llamacpp: llama-cpp-python $version with $cpu kernels" >&2

if [ -z "$wheel_dir" ]; then
    CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        "$python" -m pip install --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$version"
    exit 0
fi
key=$(printf '%s %s %s' "$version" "$args" "$(uname -m)" | sha256sum | cut -c1-16)
dir="$wheel_dir/llama-cpp-python-$version-$cpu-$key"
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "build-llamacpp: compiling (about 4 minutes on 2 cores) into $dir" >&2
    mkdir -p "$dir.tmp"
    CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        "$python" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -w "$dir.tmp"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
# --force-reinstall: the same version built with other flags may be installed already
"$python" -m pip install --quiet --force-reinstall --no-deps "$dir"/llama_cpp_python-*.whl
"$python" -m pip install --quiet "$dir"/llama_cpp_python-*.whl  # its dependencies
