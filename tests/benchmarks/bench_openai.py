"""SSE against plain-text streaming throughput, and what prompt scoring (echo + logprobs) costs per token.

A GPT-2-small-shaped q4_0 model (12 layers, 768 wide, 50257 tokens; random weights that never
pick end-of-text, so every stream decodes exactly --tokens tokens) behind one live server.
Round after round, in one run: the native plain-text stream, the native stream with
`Accept: text/event-stream`, and /v1/completions with `stream: true`; then a --prompt-tokens
prompt with max_tokens 0, scored (echo + logprobs: position by position) and not (batched
evaluation). Medians and paired ratios; the machine is noisy, so only ratios within a round
are compared.

    .venv/bin/python tests/benchmarks/bench_openai.py [--rounds 5] [--tokens 128] [--prompt-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpt2_small, start_server  # noqa: E402

from service.formats.ggml.tiny import EOT, make_tiny_gpt2  # noqa: E402


def mid_model(path: Path) -> Path:
    """A smaller random GPT-2 (6 layers, 384 wide, 8,448 tokens, q4_0), written in seconds, for a busy machine."""
    vocab = [bytes([b]) for b in range(256)] + [f"<t{i}>".encode() for i in range(8191)] + [EOT]
    make_tiny_gpt2(path, vocab=vocab, n_embd=384, n_head=6, n_layer=6, ftype="q4_0", no_eos=True)
    return path

PROMPT = "Once upon a time"


def stream_rate(client: httpx.Client, path: str, body: dict, headers: dict | None = None) -> float:
    """Decode tokens/s of one stream: (tokens - 1) over the time from first to last chunk."""
    stamps = []
    with client.stream("POST", path, json=body, headers=headers or {}) as r:
        r.raise_for_status()
        for _ in r.iter_raw():
            stamps.append(time.perf_counter())
    tokens = body.get("max_new_tokens") or body["max_tokens"]
    return (tokens - 1) / (stamps[-1] - stamps[0])


def prompt_seconds(client: httpx.Client, ids: list[int], scored: bool) -> float:
    """Wall time of a max_tokens=0 completion of `ids`, with or without scoring the prompt."""
    body = {"prompt": ids, "max_tokens": 0} | ({"echo": True, "logprobs": 1} if scored else {})
    t = time.perf_counter()
    r = client.post("/v1/completions", json=body)
    r.raise_for_status()
    elapsed = time.perf_counter() - t
    if scored:
        assert len(r.json()["choices"][0]["logprobs"]["token_logprobs"]) == len(ids)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shape", choices=["gpt2-small", "mid"], default="gpt2-small")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.tokens
    plain_body = {"prompt": PROMPT, "max_new_tokens": n, "seed": 1}
    oai_body = {"prompt": PROMPT, "max_tokens": n, "seed": 1, "stream": True}
    rates: dict[str, list[float]] = {"plain": [], "native_sse": [], "v1_sse": []}
    scored, batched = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = (gpt2_small(tmp / "gpt2-small-q4_0.bin", "q4_0") if args.shape == "gpt2-small"
                 else mid_model(tmp / "mid-q4_0.bin"))
        server = start_server(model, tmp / "log.jsonl", workers=1, threads=args.threads)
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                ids = (client.post("/tokenize", json={"text": "the cat sat on the mat " * 200}).json()["tokens"]
                       )[: args.prompt_tokens]
                stream_rate(client, "/generate/stream", plain_body | {"max_new_tokens": 8})  # warm up
                for r in range(args.rounds):
                    rates["plain"].append(stream_rate(client, "/generate/stream", plain_body))
                    rates["native_sse"].append(stream_rate(client, "/generate/stream", plain_body,
                                                           {"Accept": "text/event-stream"}))
                    rates["v1_sse"].append(stream_rate(client, "/v1/completions", oai_body))
                    batched.append(prompt_seconds(client, ids, scored=False))
                    scored.append(prompt_seconds(client, ids, scored=True))
                    print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items())
                          + f"; prompt {batched[-1]:.2f} s batched, {scored[-1]:.2f} s scored", file=sys.stderr)
        finally:
            server.stop()
    p = len(ids)
    result = {
        "shape": args.shape, "tokens": n, "rounds": args.rounds, "threads": args.threads, "prompt_tokens": p,
        **{f"{k}_tps": statistics.median(v) for k, v in rates.items()},
        "native_sse_over_plain": statistics.median(a / b for a, b in zip(rates["native_sse"], rates["plain"])),
        "v1_sse_over_plain": statistics.median(a / b for a, b in zip(rates["v1_sse"], rates["plain"])),
        "batched_ms_per_prompt_token": statistics.median(batched) * 1000 / p,
        "scored_ms_per_prompt_token": statistics.median(scored) * 1000 / p,
        "scored_over_batched": statistics.median(s / b for s, b in zip(scored, batched)),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.shape} shape, q4_0, {args.threads} threads, median of {args.rounds} paired rounds")
    print("| stream | decode tok/s | / plain text |")
    print("|---|---|---|")
    print(f"| /generate/stream, text/plain | {result['plain_tps']:.1f} | 1 |")
    print(f"| /generate/stream, text/event-stream | {result['native_sse_tps']:.1f} | "
          f"{result['native_sse_over_plain']:.3f} |")
    print(f"| /v1/completions, stream: true | {result['v1_sse_tps']:.1f} | {result['v1_sse_over_plain']:.3f} |")
    print(f"\nprompt of {p} tokens, max_tokens 0: batched {result['batched_ms_per_prompt_token']:.2f} ms/token, "
          f"scored (echo+logprobs) {result['scored_ms_per_prompt_token']:.2f} ms/token, "
          f"ratio {result['scored_over_batched']:.2f}")


if __name__ == "__main__":
    main()
