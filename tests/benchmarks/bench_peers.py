"""MiniVault against its peers on the same GPT-2-small-shaped weights, in paired rounds.

The random weights are written once as GGML by the project's writer and copied byte for byte
into a GGUF for llama.cpp (service/formats/ggml_to_gguf.py, with the `gguf` package). Peers, each
skipped with a printed reason when it is not there:

- minivault: `POST /generate/stream` of a live server (tests' LiveServer), plain-text chunks
- minivault-llamacpp: the same, on MiniVault's llama.cpp engine (the GGUF file, MINIVAULT_PARALLEL
  sequence slots in one context), if `import llama_cpp` works
- ctransformers: its own `LLM.generate` loop in-process (sampling in C), same file and threads
- llama-server: llama.cpp's server over HTTP (`POST /completion`, stream), --llama-server PATH
  (default ../shared/tools/llama-server/llama-server; how to build it: its README there, or
  `pip download --no-deps --no-binary :all: llama-cpp-python`, then CMake target llama-server)
- llama-cpp-python: llama.cpp in-process, if `import llama_cpp` works
- transformers: PyTorch fp32 (the seed's approach), if `import torch, transformers` works

Measures: decode tok/s at 1 and 2 threads (one stream); time to first token for 32-, 256- and
1000-token prompts, cold (prefix reuse off), on a prefix hit (the same prompt again, reuse on)
and on a next turn (the prompt extended by up to 40 tokens, reuse on, as a conversation's next
turn: MiniVault reuses whole prompt chunks only, so that results stay bit for bit those without
reuse); aggregate decode tok/s at 1, 2 and 4 concurrent streams. Each round runs every peer once,
back to back, so machine noise hits all alike, in the listed order and reversed every other round;
for decode, TTFT and streams the peers are started in the listed order for the first half of the rounds
and in reverse for the second (the one started first ran slower: see halves). Tables give medians
and ratios to MiniVault on each of its engines.

    .venv/bin/python tests/benchmarks/bench_peers.py [--rounds 5] [--tokens 128] [--only decode,ttft,streams]
        [--peers minivault-llamacpp,llama-server]   (a subset, for longer paired runs of two peers)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, gpt2_small, start_server  # noqa: E402

from service.formats.ggml_to_gguf import ggml_to_gguf  # noqa: E402
from service.tokenizer.bpe import GPT2Tokenizer  # noqa: E402
from tests.fixtures.gpt2_vocab import gpt2_merges, gpt2_vocab  # noqa: E402
from tests.support.server import free_port  # noqa: E402

DEFAULT_LLAMA_SERVER = ROOT.parent / "shared" / "tools" / "llama-server" / "llama-server"
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1}


# words that are one GPT-2 token each with their leading space; prompts cycle through them
WORDS = ("the of and to in is was for on as with by he at from his an were are which this be or has had not "
         "but first one their its new after who they have her she two been other when there all during into "
         "school time may years more most only over city some world would where later up such used many can "
         "state about national out known university united then made").split()


@functools.cache
def _gpt2_tokenizer() -> GPT2Tokenizer:
    """MiniVault's BPE with GPT-2's vocabulary and merges (what the servers tokenize with)."""
    return GPT2Tokenizer.from_vocab_merges(gpt2_vocab(), gpt2_merges(), ["<|endoftext|>"])


@functools.cache
def prompt_of(n: int) -> tuple[str, list[int]]:
    """A prompt of exactly n GPT-2 tokens, as text and as ids (checked with MiniVault's BPE)."""
    vocab = gpt2_vocab()
    ids = [vocab["\u0120" + WORDS[i % len(WORDS)]] for i in range(n)]
    text = "".join(" " + WORDS[i % len(WORDS)] for i in range(n))
    encoded = _gpt2_tokenizer().encode(text)
    if encoded != ids:
        raise RuntimeError(f"the {n}-token prompt tokenizes to {len(encoded)} tokens, not the {n} words")
    return text, ids


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- peers: each returns (ttft_s, decode_tok_s) for one request ---------------------------------
def timed(t0: float, stamps: list[float], tokens: int) -> tuple[float, float]:
    """(time to the first stamp, tokens after the first per second between the first and last
    stamps); the rate is 0 when everything came at once (chunks may coalesce: the ends bound it)."""
    span = stamps[-1] - stamps[0]
    return stamps[0] - t0, (tokens - 1) / span if span > 0 else 0.0


class MiniVault:
    name = "minivault"

    engine = "ctransformers"

    def __init__(self, model: Path, tmp: Path, threads: int, workers: int = 1) -> None:
        self.start(model, tmp / f"log-{threads}-{workers}.jsonl", workers=workers, threads=threads)

    def start(self, model: Path, log: Path, **settings: object) -> None:
        """A live server on this peer's engine, named and checked: with llama-cpp-python installed,
        `auto` would run the GGUF copy beside the GGML file on llama.cpp (as runs once did)."""
        self.server = start_server(model, log, engine=self.engine, **settings)
        self.client = httpx.Client(base_url=self.server.url, timeout=600)
        running = self.client.get("/health").json().get("engine")
        if running != self.engine:
            self.close()
            raise RuntimeError(f"{self.name} runs on {running}, not {self.engine}")

    def run(self, text: str, ids: list[int], tokens: int, cache: bool = False) -> tuple[float, float]:
        body = {"prompt": text, "max_new_tokens": tokens, "seed": 1, "cache_prompt": cache} | SAMPLING
        t0 = time.perf_counter()
        stamps = []
        with self.client.stream("POST", "/generate/stream", json=body) as r:
            r.raise_for_status()
            for _ in r.iter_raw():
                stamps.append(time.perf_counter())
        return timed(t0, stamps, tokens)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


class MiniVaultLlama(MiniVault):
    name = "minivault-llamacpp"
    engine = "llamacpp"

    def __init__(self, gguf: Path, tmp: Path, threads: int, parallel: int = 1) -> None:
        import llama_cpp  # noqa: F401  (skipped with its reason when it is not installed)

        self.start(gguf, tmp / f"log-llama-{threads}-{parallel}.jsonl", parallel=parallel, threads=threads)


class CTransformers:
    name = "ctransformers"

    def __init__(self, model: Path, tmp: Path, threads: int) -> None:
        from ctransformers.llm import LLM, Config

        from service.engine.ctransformers_backend import _private_library

        self.llm = LLM(str(model), "gpt2", config=Config(threads=threads), lib=_private_library(tmp, 900 + threads))

    def run(self, text: str, ids: list[int], tokens: int, cache: bool = False) -> tuple[float, float]:
        t0 = time.perf_counter()
        stamps = []
        for _ in self.llm.generate(ids, seed=1, reset=True, top_k=40, top_p=0.95, temperature=0.8,
                                   repetition_penalty=1.1, batch_size=32):
            stamps.append(time.perf_counter())
            if len(stamps) == tokens:
                break
        return timed(t0, stamps, tokens)

    def close(self) -> None:
        self.llm.ctransformers_llm_delete()
        self.llm._llm = None


# CPU variants llama-server must not pick: this VM reports AMX, but AMX code dies with SIGILL here
SKIP_CPU_VARIANTS = ("libggml-cpu-sapphirerapids.so",)


def llama_server_copy(path: Path, cache: Path) -> Path:
    """A runnable copy of a llama-server directory: symlinks that were flattened into small text
    files naming their target (as a plain copy or an upload does) become symlinks again."""
    dst = cache / "llama-server"
    if not dst.exists():
        dst.mkdir(parents=True)
        for f in path.parent.iterdir():
            if f.name in SKIP_CPU_VARIANTS and not os.environ.get("BENCH_ALL_CPU_VARIANTS"):
                continue
            if ".so" in f.name and f.stat().st_size < 100 and (path.parent / f.read_text().strip()).is_file():
                (dst / f.name).symlink_to(f.read_text().strip())
            else:
                shutil.copy2(f, dst / f.name)
    return dst / path.name


class LlamaServer:
    name = "llama-server"

    def __init__(self, binary: Path, gguf: Path, threads: int, parallel: int = 1) -> None:
        self.port = free_port()
        self.log = open(gguf.parent / f"llama-server-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
             "-c", str(1024 * parallel), "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=binary.parent)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("llama-server did not become healthy in 300 s")

    def run(self, text: str, ids: list[int], tokens: int, cache: bool = False) -> tuple[float, float]:
        body = {"prompt": ids, "n_predict": tokens, "ignore_eos": True, "stream": True, "cache_prompt": cache,
                "seed": 1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.0, "repeat_penalty": 1.1}
        t0 = time.perf_counter()
        stamps = []
        # a new connection per request: llama-server closes a kept-alive one after a streamed
        # response in some cases, and the next request on it failed (connecting costs ~0.1 ms here)
        with self.client.stream("POST", "/completion", json=body, headers={"Connection": "close"}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line and '"stop":true' not in line:
                    stamps.append(time.perf_counter())
        return timed(t0, stamps, len(stamps))

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class LlamaCppPython:
    name = "llama-cpp-python"

    def __init__(self, gguf: Path, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(self, text: str, ids: list[int], tokens: int, cache: bool = False) -> tuple[float, float]:
        self.llm.reset()
        t0 = time.perf_counter()
        stamps = []
        for _ in self.llm.generate(ids, top_k=40, top_p=0.95, temp=0.8, repeat_penalty=1.1, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == tokens:
                break
        return timed(t0, stamps, tokens)

    def close(self) -> None:
        self.llm.close()


class Transformers:
    name = "transformers"

    def __init__(self, model: Path, threads: int) -> None:
        import numpy as np
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        from service.formats.ggml.format import read_gpt2, read_tensor

        torch.set_num_threads(threads)
        g = read_gpt2(model)
        hp = g.hparams
        cfg = GPT2Config(vocab_size=hp.n_vocab, n_positions=hp.n_ctx, n_embd=hp.n_embd, n_layer=hp.n_layer,
                         n_head=hp.n_head)
        self.torch, self.model = torch, GPT2LMHeadModel(cfg).eval()
        state = {}
        for name, info in g.tensors.items():  # the same (dequantised) weights; Conv1D stores (in, out)
            w = torch.from_numpy(np.ascontiguousarray(read_tensor(model, info)))
            hf = _hf_name(name)
            state[hf] = w.T.contiguous() if hf.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else w
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to wte unless the file has its own
            raise RuntimeError(f"GGML -> transformers names: missing {missing}, unexpected {unexpected}")

    def run(self, text: str, ids: list[int], tokens: int, cache: bool = False) -> tuple[float, float]:
        torch = self.torch
        stamps = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(torch.tensor([ids]), use_cache=True)
            past = out.past_key_values
            for _ in range(tokens):
                nxt = torch.multinomial(torch.softmax(out.logits[0, -1] / 0.8, -1), 1)
                stamps.append(time.perf_counter())
                out = self.model(nxt.view(1, 1), past_key_values=past, use_cache=True)
                past = out.past_key_values
        return timed(t0, stamps, tokens)

    def close(self) -> None:
        pass


def _hf_name(ggml: str) -> str:
    """transformers' name for a GGML GPT-2 tensor (model/h3/attn/c_attn/w -> transformer.h.3.attn.c_attn.weight)."""
    parts = ggml.split("/")[1:]
    if parts in (["wte"], ["wpe"]):
        return f"transformer.{parts[0]}.weight"
    if parts == ["lm_head"]:
        return "lm_head.weight"
    leaf = {"g": "weight", "b": "bias", "w": "weight"}[parts[-1]]
    head = ["h", parts[0][1:]] if parts[0][0] == "h" and parts[0][1:].isdigit() else [parts[0]]
    return ".".join(["transformer", *head, *parts[1:-1], leaf])


def minivault_llama(gguf: Path, tmp: Path, threads: int, parallel: int = 1) -> list:
    """[MiniVault on its llama.cpp engine], or [] with the reason printed."""
    try:
        return [MiniVaultLlama(gguf, tmp, threads, parallel)]
    except ImportError as exc:
        say(f"skip minivault-llamacpp: cannot import llama_cpp ({exc})")
        return []


PEERS = ("minivault", "ctransformers", "minivault-llamacpp", "llama-server", "llama-cpp-python", "transformers")


def wanted(args) -> set[str]:
    """The peers --peers names (all by default); an unknown name is an error, not a silent skip."""
    names = set(args.peers.split(",")) if args.peers else set(PEERS)
    if names - set(PEERS):
        raise SystemExit(f"--peers: unknown {sorted(names - set(PEERS))}; choose from {', '.join(PEERS)}")
    return names


def make_peers(args, model: Path, gguf: Path, tmp: Path, threads: int, reverse: bool = False,
               among: tuple[str, ...] = PEERS) -> list:
    """Every peer that can run here (of those `among`), at `threads`, started in the listed order
    (or reversed: see halves); prints why each missing one is skipped."""
    want = wanted(args) & set(among)
    binary = Path(args.llama_server)
    makers = [(MiniVault.name, lambda: [MiniVault(model, tmp, threads)]),
              (CTransformers.name, lambda: [CTransformers(model, tmp, threads)]),
              (MiniVaultLlama.name, lambda: minivault_llama(gguf, tmp, threads)),
              (LlamaServer.name, lambda: llama_server(binary, gguf, tmp, threads)),
              (LlamaCppPython.name, lambda: optional(LlamaCppPython, "llama_cpp", gguf, threads)),
              (Transformers.name, lambda: optional(Transformers, "torch, transformers", model, threads))]
    return started([m for name, m in makers if name in want], reverse)


def started(makers: list, reverse: bool) -> list:
    """The peers the makers start, in their order or reversed, listed in their order either way."""
    made = [m() for m in (reversed(makers) if reverse else makers)]
    return [p for group in (reversed(made) if reverse else made) for p in group]


def llama_server(binary: Path, gguf: Path, tmp: Path, threads: int, parallel: int = 1) -> list:
    """[llama-server on `gguf`], or [] with the reason printed."""
    if binary.is_file():
        return [LlamaServer(llama_server_copy(binary, tmp), gguf, threads, parallel)]
    say(f"skip llama-server: no binary at {binary} (--llama-server PATH; build: see this script's docstring)")
    return []


def optional(cls: type, needs: str, path: Path, threads: int) -> list:
    """[cls(path, threads)], or [] with the reason printed when its library cannot be imported."""
    try:
        return [cls(path, threads)]
    except ImportError as exc:
        say(f"skip {cls.name}: cannot import {needs} ({exc})")
        return []


def halves(rounds: int) -> list[tuple[bool, range]]:
    """The rounds in two halves, the peers started in the listed order for the first and reversed
    for the second: on this machine, of two identical MiniVault servers the one started first
    decoded 5-7% slower over a whole run (two llama-servers: 1%), whatever order each round took."""
    first = (rounds + 1) // 2
    return [(False, range(first)), (True, range(first, rounds))]


def each_round(peers: list, n: int) -> list:
    """The peers in this round's order: reversed every other round, so no one always goes first."""
    return peers if n % 2 == 0 else peers[::-1]


def table(title: str, rows: dict[str, list[float]], unit: str, higher_better: bool) -> None:
    """A markdown table of medians, and for each MiniVault engine the median of its paired ratios to
    the peer (round by round: the machine's noise moves both sides of a pair alike; for times,
    above 1 means MiniVault takes longer)."""
    bases = [b for b in ("minivault", "minivault-llamacpp") if rows.get(b)]
    better = "higher is better" if higher_better else "lower is better"
    heads = " | ".join(f"{b} / peer (paired)" for b in bases)
    print(f"\n{title} ({better})\n| peer | median {unit} | {heads} |\n|---|---|" + "---|" * len(bases))
    for name, vals in rows.items():
        ratios = [statistics.median(a / b for a, b in zip(rows[base], vals)) for base in bases]
        print(f"| {name} | {statistics.median(vals):.1f} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


def bench_decode(args, model, gguf, tmp, results) -> None:
    text, ids = prompt_of(8)
    for threads in (1, 2):
        rows: dict[str, list[float]] = {}
        for reverse, rounds in halves(args.rounds):
            peers = make_peers(args, model, gguf, tmp, threads, reverse)
            try:
                for p in peers:
                    p.run(text, ids, 8)  # warm up
                for n in rounds:
                    for p in each_round(peers, n):
                        rows.setdefault(p.name, []).append(p.run(text, ids, args.tokens)[1])
                    say(f"decode {threads}t round {n + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()))
            finally:
                for p in peers:
                    p.close()
        results[f"decode_{threads}t"] = rows
        table(f"decode tok/s, {threads} thread(s), one stream, {args.tokens} tokens", rows, "tok/s", True)


def next_turn(n_prompt: int) -> int:
    """The length of a conversation's next turn after an n-token prompt: 40 tokens more, within
    the 1024-token context with the 2 tokens each request generates."""
    return min(n_prompt + 40, 1022)


def bench_ttft(args, model, gguf, tmp, results) -> None:
    prompts = (32, 256, 1000)
    rows: dict[int, dict[str, list[float]]] = {n_prompt: {} for n_prompt in prompts}
    for reverse, rounds in halves(args.rounds):  # started in balanced order, as for decode
        peers = make_peers(args, model, gguf, tmp, args.threads, reverse,
                           among=("minivault", "minivault-llamacpp", "llama-server"))  # the servers
        try:
            for n_prompt in prompts:
                text, ids = prompt_of(n_prompt)
                longer, longer_ids = prompt_of(next_turn(n_prompt))
                for n in rounds:
                    for p in each_round(list(peers), n):
                        try:
                            cold = p.run(text, ids, 2, cache=False)[0] * 1000
                            p.run(text, ids, 2, cache=True)  # fill the cache
                            hit = p.run(text, ids, 2, cache=True)[0] * 1000
                            turn = p.run(longer, longer_ids, 2, cache=True)[0] * 1000
                        except httpx.HTTPError as exc:  # a peer that fails is dropped, visibly
                            say(f"{p.name} failed on a {n_prompt}-token prompt ({exc}): dropped from the TTFT runs")
                            peers.remove(p)
                            p.close()
                            continue
                        rows[n_prompt].setdefault(p.name, []).append(cold)
                        rows[n_prompt].setdefault(p.name + " (prefix hit)", []).append(hit)
                        rows[n_prompt].setdefault(p.name + f" (next turn, +{next_turn(n_prompt) - n_prompt})", []).append(turn)
                    say(f"ttft {n_prompt} round {n + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows[n_prompt].items()))
        finally:
            for p in peers:
                p.close()
    for n_prompt in prompts:
        results[f"ttft_{n_prompt}"] = rows[n_prompt]
        table(f"time to first token, {n_prompt}-token prompt, {args.threads} threads", rows[n_prompt], "ms", False)


def bench_streams(args, model, gguf, tmp, results) -> None:
    text, ids = prompt_of(8)
    want = wanted(args)
    for streams in (1, 2, 4):
        makers = [(MiniVault.name, lambda s=streams: [MiniVault(model, tmp, threads=1, workers=min(s, 2))]),
                  (MiniVaultLlama.name, lambda s=streams: minivault_llama(gguf, tmp, args.threads, parallel=s)),
                  (LlamaServer.name, lambda s=streams: llama_server(Path(args.llama_server), gguf, tmp, args.threads, s))]
        rows: dict[str, list[float]] = {}
        for reverse, rounds in halves(args.rounds):
            peers = started([m for name, m in makers if name in want], reverse)
            try:
                for n in rounds:
                    for p in each_round(peers, n):
                        t0 = time.perf_counter()
                        workers = [threading.Thread(target=p.run, args=(text, ids, args.tokens)) for _ in range(streams)]
                        for w in workers:
                            w.start()
                        for w in workers:
                            w.join()
                        rows.setdefault(p.name, []).append(streams * args.tokens / (time.perf_counter() - t0))
            finally:
                for p in peers:
                    p.close()
        results[f"streams_{streams}"] = rows
        table(f"aggregate tok/s, {streams} concurrent stream(s) (minivault: {min(streams, 2)} worker(s) x 1 thread; "
              f"minivault-llamacpp: {streams} slot(s) x {args.threads} threads; llama-server: -np {streams} -t {args.threads})", rows, "tok/s", True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="threads for the TTFT runs")
    ap.add_argument("--quant", default="q4_0")
    ap.add_argument("--only", default="decode,ttft,streams")
    ap.add_argument("--llama-server", default=str(DEFAULT_LLAMA_SERVER))
    ap.add_argument("--peers", default="", help=f"comma-separated subset of: {', '.join(PEERS)} (default: all)")
    ap.add_argument("--json", help="also write the raw figures to this file")
    args = ap.parse_args()
    say(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (figures are noisy when it is busy)")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = gpt2_small(tmp / "model.bin", args.quant)
        gguf = ggml_to_gguf(model, tmp / "model.gguf")
        for part in args.only.split(","):
            {"decode": bench_decode, "ttft": bench_ttft, "streams": bench_streams}[part](args, model, gguf, tmp, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
