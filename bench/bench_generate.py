"""Generation speed: SmolLM2-135M-Instruct (Q4_1 GGUF) greedy decoding, entrenar vs transformers.

Both load the same GGUF file: entrenar keeps the Q4_1 / Q8_0 blocks packed (decoding steps take the
fused matrix-vector kernel `entrenar.kernels.ggml_matvec`; the prompt goes through the tiled
dequantize-then-BLAS path), transformers dequantizes it to a float32 LlamaForCausalLM on load (the
baseline its users have). One run: a prompt of PROMPT_TOKENS tokens, then NEW_TOKENS greedy tokens
with a KV cache (transformers is held to exactly NEW_TOKENS with min_new_tokens; entrenar stops on
nothing). The two must produce the same tokens; then each is timed `--rounds` times, interleaved,
and the median run gives tokens/s = NEW_TOKENS / seconds (prefill included). torch runs on as many
threads as NumPy's BLAS, numba on its default pool. The load average is recorded: on a shared
machine the ratio is the number to read. Goal: entrenar at most GOAL x transformers' time.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
from common import label, numpy_blas_threads, print_header, require_torch, write_results

from entrenar.assets import smollm2_gguf
from entrenar.models.generate import generate
from entrenar.models.gguf import llama_from_gguf, open_gguf
from entrenar.models.gguf_tokenizer import gguf_tokenizer

GOAL = 1.0
PROMPT_TOKENS = 20
NEW_TOKENS = 64
TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type with an oil-based ink and a screw press, and"
)


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed runs per framework")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="tokens generated per run")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    args = parser.parse_args()
    torch = require_torch()
    import transformers

    torch.set_num_threads(numpy_blas_threads())
    n = args.new_tokens
    info = print_header(
        f"SmolLM2-135M-Instruct Q4_1 GGUF: greedy generation, prompt {PROMPT_TOKENS} tokens, {n} new tokens"
    )
    path = smollm2_gguf()
    reader = open_gguf(path)
    ours = llama_from_gguf(reader)
    ids = np.array([gguf_tokenizer(reader).tokenizer.encode(TEXT).ids[:PROMPT_TOKENS]], dtype=np.int64)
    assert ids.shape[1] == PROMPT_TOKENS, f"the prompt has only {ids.shape[1]} tokens"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    prompt = torch.from_numpy(ids)

    def run_ours() -> np.ndarray:
        return generate(ours, ids, n)[0, PROMPT_TOKENS:]

    def run_hf() -> np.ndarray:
        with torch.no_grad():
            out = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=2,
            )
        return out[0, PROMPT_TOKENS:].numpy()

    runs = {"entrenar": run_ours, "transformers": run_hf}
    first = {k: fn() for k, fn in runs.items()}  # warm-up (numba compiles or loads its cache)
    differ = np.flatnonzero(first["entrenar"] != first["transformers"])
    same = int(differ[0]) if differ.size else n  # tokens equal before the first difference
    at = f" (then {first['entrenar'][same]} vs {first['transformers'][same]})" if differ.size else ""
    print(f"   greedy tokens equal: the first {same} of {n}{at}", flush=True)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            samples[k].append(timed(fn)[0])
            print(f"   {k}: {samples[k][-1]:.2f} s", flush=True)
    secs = {k: float(np.median(v)) for k, v in samples.items()}
    tps = {k: n / v for k, v in secs.items()}
    ratio = secs["entrenar"] / secs["transformers"]
    load = os.getloadavg()
    print(f"   torch {torch.__version__}, torch threads {torch.get_num_threads()}, load average {load}")
    for k in runs:
        print(f"   {k:<12} {secs[k] * 1e3 / n:8.2f} ms/token  {tps[k]:7.2f} tokens/s  (runs {samples[k]})")
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"   ratio entrenar/transformers time {ratio:.2f}x ({verdict} the goal <= {GOAL}x)")
    write_results(
        f"generate.{args.label or label()}",
        {
            "benchmark": "generate",
            "workload": f"SmolLM2-135M-Instruct Q4_1 GGUF, greedy, prompt {PROMPT_TOKENS}, {n} new tokens",
            "entrenar_ms": secs["entrenar"] * 1e3 / n,
            "torch_ms": secs["transformers"] * 1e3 / n,
            "entrenar_tokens_per_s": tps["entrenar"],
            "torch_tokens_per_s": tps["transformers"],
            "greedy_tokens_equal_prefix": same,
            "new_tokens": n,
            "ratio": ratio,
            "goal_ratio": GOAL,
            "load_average": load,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas": info,
            "round_seconds": samples,
        },
    )


if __name__ == "__main__":
    main()
