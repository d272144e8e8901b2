"""Does a BLAS-enabled ctransformers pay for prompts? Its wheel against a build linked to OpenBLAS, paired.

ctransformers has no BLAS option for CPUs, so this builds one: its sdist from PyPI with ggml's
GGML_USE_OPENBLAS defined and Debian's OpenBLAS linked (`apt-get install libopenblas-dev`), the same
AVX2 flags as the wheel, into a cache outside the repo. Then it evaluates 32-, 256- and 1000-token
prompts the way MiniVault's engine does (one batch per call), each configuration in its own process (ggml aborts the
process when a batch does not fit its buffer: that is reported, not fatal), alternating, and prints
medians and the median of the paired ratios.

    .venv/bin/python tests/benchmarks/bench_ctransformers_blas.py [--rounds 3] [--threads 2] [--blas-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minivault" / "ctransformers-openblas"
PATCH = """
if (CT_OPENBLAS)
    find_package(BLAS REQUIRED)
    target_compile_definitions(ctransformers PRIVATE GGML_USE_OPENBLAS)
    target_link_libraries(ctransformers PRIVATE ${BLAS_LIBRARIES})
endif()
"""
CHILD = r"""
import ctypes, json, sys, time
from ctransformers.llm import LLM, Config
model, lib, batch, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = LLM(model, "gpt2", config=Config(threads=threads), lib=lib)
ids = [(i * 7919) % 50000 for i in range(n)]
times = []
for _ in range(3):  # MiniVault's engine's calls: one batch per call, at its positions
    t = time.perf_counter()
    for start in range(0, n, batch):
        chunk = ids[start:start + batch]
        if not llm.ctransformers_llm_batch_eval((ctypes.c_int * len(chunk))(*chunk), len(chunk), start, len(chunk), threads):
            sys.exit("eval failed")
    times.append(time.perf_counter() - t)
print(json.dumps(sorted(times)[1]))
"""


def blas_library() -> Path:
    """The OpenBLAS build of ctransformers' library (built once into CACHE)."""
    lib = CACHE / "venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" \
        / "ctransformers" / "lib" / "local" / "libctransformers.so"
    if lib.is_file():
        return lib
    if not Path("/usr/include/x86_64-linux-gnu/cblas.h").exists() and not Path("/usr/include/cblas.h").exists():
        raise SystemExit("no OpenBLAS headers: apt-get install libopenblas-dev")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "ctransformers==0.2.27", "-d", tmp], check=True)
        with tarfile.open(next(Path(tmp).glob("ctransformers-*.tar.gz"))) as tar:
            tar.extractall(tmp, filter="data")
        src = next(p for p in Path(tmp).iterdir() if p.is_dir())
        cmake = src / "CMakeLists.txt"
        anchor = "target_compile_definitions(ctransformers PRIVATE GGML_USE_K_QUANTS)\n"
        cmake.write_text(cmake.read_text().replace(anchor, anchor + PATCH, 1))
        shutil.rmtree(CACHE, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(CACHE / "venv")], check=True)
        env = os.environ | {"CMAKE_ARGS": "-DCT_OPENBLAS=ON -DCT_INSTRUCTIONS=avx2"}
        subprocess.run([str(CACHE / "venv" / "bin" / "pip"), "install", "-q", str(src)], check=True, env=env)
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blas-threads", type=int, default=1, help="OPENBLAS_NUM_THREADS (ggml's threads run beside it)")
    args = ap.parse_args()
    import ctransformers

    wheel = Path(ctransformers.__file__).parent / "lib" / "avx2" / "libctransformers.so"
    configs = [("wheel", wheel, 32), ("openblas", blas_library(), 32), ("openblas", blas_library(), 128)]
    env = os.environ | {"OPENBLAS_NUM_THREADS": str(args.blas_threads)}
    with tempfile.TemporaryDirectory() as tmp:
        model = gpt2_small(Path(tmp) / "model.bin", "q4_0")
        for n in (32, 256, 1000):
            rows: dict[tuple, list[float]] = {c: [] for c in configs}
            for _ in range(args.rounds):
                for c in configs:
                    p = subprocess.run([sys.executable, "-c", CHILD, str(model), str(c[1]), str(c[2]), str(n),
                                        str(args.threads)], capture_output=True, text=True, env=env)
                    rows[c].append(json.loads(p.stdout) * 1000 if p.returncode == 0 else float("nan"))
            print(f"\n{n}-token prompt, {args.threads} threads (ms, lower is better)\n| build | batch | median ms | wheel / build (paired) |\n|---|---|---|---|")
            for c, v in rows.items():
                if any(x != x for x in v):
                    print(f"| {c[0]} | {c[2]} | crashed (ggml's buffer) | |")
                    continue
                ratio = statistics.median(a / b for a, b in zip(rows[configs[0]], v))
                print(f"| {c[0]} | {c[2]} | {statistics.median(v):.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
