"""One AdamW training step of a GPT-style LM: 2 pre-LN layers, d_model 256, 4 heads, ff 1024, T 128,
batch 8, vocab 1000, tied embeddings, float32.

entrenar (`entrenar.nn.GPT` + `entrenar.optim.AdamW`) against the same architecture written with
torch.nn modules + `torch.optim.AdamW`, both from the same initial weights (entrenar's GPT-2 init,
copied by parameter name); forward + backward + update. Prints ms/step, tokens/s, the ratio, the GEMM
floor (the step's matrix products alone, timed in NumPy in the same run: what no step can beat) and a
cProfile top-15 of the entrenar step. Goal: entrenar at most 0.8x PyTorch's time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from typing import Any

import numpy as np
from common import label, measure, numpy_blas_threads, print_header, require_torch, write_results

from entrenar.nn.gpt import GPT, GPTConfig
from entrenar.optim import AdamW
from entrenar.runtime import keep_freed_memory

GOAL = 0.8
CONFIG = GPTConfig(vocab_size=1000, block_size=128, n_layer=2, n_head=4, n_embd=256, d_ff=1024)
BATCH, SEQ = 8, 128
LR, WEIGHT_DECAY = 3e-4, 0.01


class EntrenarStep:
    def __init__(self, model: GPT, x: np.ndarray, y: np.ndarray) -> None:
        self.model = model
        self.opt = AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.x, self.y = x, y

    def step(self) -> float:
        _, loss = self.model(self.x, self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.item())


def torch_gpt(torch: Any) -> Any:
    """The same GPT as torch.nn modules, with our parameter names (so state dicts match key for key)."""
    nn, F = torch.nn, torch.nn.functional
    c = CONFIG

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj = nn.Linear(c.n_embd, c.n_embd), nn.Linear(c.n_embd, c.n_embd)
            self.v_proj, self.o_proj = nn.Linear(c.n_embd, c.n_embd), nn.Linear(c.n_embd, c.n_embd)

        def forward(self, x: Any) -> Any:
            B, T, C = x.shape

            def heads(h: Any) -> Any:  # (B, T, C) -> (B, H, T, D)
                return h.view(B, T, c.n_head, C // c.n_head).transpose(1, 2)

            a = F.scaled_dot_product_attention(
                heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), is_causal=True
            )
            return self.o_proj(a.transpose(1, 2).reshape(B, T, C))  # (B, H, T, D) -> (B, T, C)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(c.n_embd, c.ff_dim), nn.Linear(c.ff_dim, c.n_embd)

        def forward(self, x: Any) -> Any:
            return self.fc2(F.gelu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(c.n_embd), Attention()
            self.ln_2, self.mlp = nn.LayerNorm(c.n_embd), MLP()

        def forward(self, x: Any) -> Any:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
            self.blocks = nn.ModuleList(Block() for _ in range(c.n_layer))
            self.ln_f = nn.LayerNorm(c.n_embd)
            self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx: Any, targets: Any) -> Any:
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))  # (B, T, C) -> (B, T, V)
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    return TorchGPT()


class TorchStep:
    def __init__(self, torch: Any, init: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
        self.model = torch_gpt(torch)
        # entrenar saves the tied lm_head.weight once, as wte.weight: torch expects it under both names
        state = {k: torch.from_numpy(v.copy()) for k, v in init.items()}
        self.model.load_state_dict({**state, "lm_head.weight": state["wte.weight"]})
        assert self.model.lm_head.weight is self.model.wte.weight
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def step(self) -> float:
        loss = self.model(self.x, self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.item())


def step_products() -> list[tuple[str, int, int, int, int]]:
    """The matrix products of one training step: (what, batch, m, k, n) for (batch of) (m, k) @ (k, n).

    Per linear layer (out, in) on N = B T rows: the forward (N, in) @ (in, out), and in the backward
    the input gradient (N, out) @ (out, in) and the weight gradient (out, N) @ (N, in). Per attention
    layer, over B H (batch, head) pairs: q k^T and p v forward; dv = p^T g, dp = g v^T, dq = ds k and
    dk = ds^T q backward (as full products: BLAS has no causal triangle).
    """
    c, n = CONFIG, BATCH * SEQ
    d, f, t, hd = c.n_embd, c.ff_dim, SEQ, c.n_embd // c.n_head
    linears = [(d, d)] * 4 + [(f, d), (d, f)]  # q, k, v, o, fc1 (out, in), fc2
    out = []
    for layer in range(c.n_layer):
        for o, i in linears:
            out += [(f"L{layer} fwd", 1, n, i, o), (f"L{layer} dx", 1, n, o, i), (f"L{layer} dw", 1, o, n, i)]
        bh = BATCH * c.n_head
        out += [(f"L{layer} attn", bh, t, hd, t), (f"L{layer} attn", bh, t, t, hd)] * 3
    v = c.vocab_size
    return [*out, ("lm_head fwd", 1, n, d, v), ("lm_head dx", 1, n, v, d), ("lm_head dw", 1, v, n, d)]


def gemm_floor(repeats: int = 9) -> dict[str, float]:
    """The step's products alone, each timed in NumPy (first decile of `repeats`): their sum (`as_shaped_ms`),
    their GFLOP, and the time they would take at the best rate any of them (or a 1024^3 product)
    reached (`at_peak_ms`). No step can take less than its GEMMs; 0.8x torch must fit above them."""
    rng = np.random.default_rng(0)
    total_s, flops, best_rate = 0.0, 0.0, 0.0
    shapes = [(b, m, k, n) for _, b, m, k, n in step_products()] + [(1, 1024, 1024, 1024)]
    for idx, (b, m, k, n) in enumerate(shapes):
        lead = (b,) if b > 1 else ()
        a = rng.standard_normal((*lead, m, k), dtype=np.float32)
        w = rng.standard_normal((*lead, k, n), dtype=np.float32)
        out = np.empty((*lead, m, n), dtype=np.float32)
        t = measure(lambda a=a, w=w, out=out: np.matmul(a, w, out=out), repeats=repeats, warmup=2)
        seconds = t.p10_s
        f = 2.0 * b * m * k * n
        best_rate = max(best_rate, f / seconds)
        if idx < len(shapes) - 1:
            total_s += seconds
            flops += f
    return {"as_shaped_ms": total_s * 1e3, "gflop": flops / 1e9, "peak_gflops": best_rate / 1e9,
            "at_peak_ms": flops / best_rate * 1e3}  # fmt: skip


def profile_top(fn: Any, steps: int, top: int = 15) -> str:
    """cProfile of `steps` calls of fn: the `top` functions by own time (tottime)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per framework")
    parser.add_argument("--profile-steps", type=int, default=10, help="entrenar steps under cProfile")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call entrenar.runtime.keep_freed_memory() first, as the entrenar command does (process-wide: "
        "both frameworks run with it)",
    )
    args = parser.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    torch = require_torch()
    torch.set_num_threads(numpy_blas_threads())
    c = CONFIG
    info = print_header(
        f"GPT LM {c.n_layer} layers, d {c.n_embd}, {c.n_head} heads, ff {c.ff_dim}, T {SEQ}, batch {BATCH}, "
        f"vocab {c.vocab_size}, float32: one AdamW step"
    )

    rng = np.random.default_rng(0)
    model = GPT(c, dtype=np.float32, generator=np.random.default_rng(1))
    init = {k: v.copy() for k, v in model.state_dict().items()}
    tokens = rng.integers(0, c.vocab_size, (BATCH, SEQ + 1))
    x, y = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    runs = {"entrenar": EntrenarStep(model, x, y), "torch": TorchStep(torch, init, x, y)}

    # Both must train alike before either is timed: same losses over a few steps.
    losses = {k: [r.step() for _ in range(3)] for k, r in runs.items()}
    np.testing.assert_allclose(
        losses["entrenar"], losses["torch"], rtol=1e-4, err_msg="entrenar vs torch losses"
    )

    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, r in runs.items():
            samples[k].append(measure(r.step, repeats=args.repeats, warmup=2).median_ms)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    ratio = ms["entrenar"] / ms["torch"]
    tok = {k: BATCH * SEQ / (v / 1e3) for k, v in ms.items()}
    print(f"   torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    print(f"   malloc keeps freed memory (entrenar.runtime.keep_freed_memory): {kept}")
    for k in runs:
        print(f"   {k:<9} {ms[k]:8.2f} ms/step  {tok[k]:9.0f} tokens/s  ({ms[k] / ms['torch']:.2f}x torch)")
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"   ratio entrenar/torch {ratio:.2f}x ({verdict} the goal <= {GOAL}x)")
    floor = gemm_floor()
    shaped, peak = floor["as_shaped_ms"], floor["at_peak_ms"]
    print(
        f"   GEMM floor: the step's {floor['gflop']:.2f} GFLOP of products alone take {shaped:.1f} ms as "
        f"shaped ({shaped / ms['torch']:.2f}x torch's step), {peak:.1f} ms at the best rate measured "
        f"({floor['peak_gflops']:.0f} GFLOP/s; {peak / ms['torch']:.2f}x); "
        f"the goal is {GOAL * ms['torch']:.1f} ms"
    )

    profile = profile_top(runs["entrenar"].step, args.profile_steps)
    print(f"\n   cProfile of {args.profile_steps} entrenar steps, top 15 by tottime:")
    print(profile)
    write_results(
        f"gpt.{args.label or label()}",
        {
            "benchmark": "gpt",
            "workload": (
                f"GPT LM {c.n_layer}x d{c.n_embd} h{c.n_head} ff{c.ff_dim}, T {SEQ}, batch {BATCH}, "
                f"vocab {c.vocab_size}, tied, float32, AdamW step"
            ),
            "entrenar_ms": ms["entrenar"],
            "torch_ms": ms["torch"],
            "entrenar_tokens_per_s": tok["entrenar"],
            "torch_tokens_per_s": tok["torch"],
            "ratio": ratio,
            "goal_ratio": GOAL,
            "gemm_floor": floor,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "keep_freed_memory": kept,
            "blas": info,
            "round_medians_ms": samples,
            "profile_top15": profile,
        },
    )


if __name__ == "__main__":
    main()
