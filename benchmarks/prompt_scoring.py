"""Label scoring speed: lib.prompting's shared-prefix scorer against naive per-label scoring, with SmolLM2-135M.

"Naive" is the seed's way: one unbatched forward pass over prompt + label for every (example, label) pair, so on
SST-2 each prompt runs twice. The shared-prefix scorer runs each prompt once (batched, right-padded) and reads the
first token of every label off its last position; labels of several tokens continue from copies of the prompt's KV
cache. A third SST-2 row (shared prefix, batch 1) separates the two gains: the prompt computed once, and batching.
On BANKING77 (77 multi-token intent names) the reference is the batched per-label scorer `lib.losses.
verbalizer_logprobs` (prompt + label rows, 16 per forward), so the gain there is the KV-cache reuse alone.

Every method runs in each round (A B C A B C ...); the ratios are medians over rounds of the ratio within a round,
which stands up to other processes using the CPU in bursts. Scores are checked against the reference (<= 1e-4).

    python benchmarks/prompt_scoring.py            # ~5 minutes on 2 CPU cores (model loading included)
    python benchmarks/prompt_scoring.py --quick    # fewer examples and rounds: a smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never call the hub

import torch  # noqa: E402

from lib.data import load_classification  # noqa: E402
from lib.losses import verbalizer_logprobs  # noqa: E402
from lib.models import SMOLLM2, load_causal_lm, load_tokenizer  # noqa: E402
from lib.prompting import load_templates, score_labels, score_naive  # noqa: E402


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer examples and rounds")
    args = ap.parse_args()
    n_sst, n_bank, rounds = (32, 4, 2) if args.quick else (96, 8, 3)
    tok, model = load_tokenizer(SMOLLM2), load_causal_lm(SMOLLM2)
    sst = load_classification("sst2").shuffle(seed=0).select(range(n_sst))
    t_sst = load_templates("sst2", sst.features["label"].names)[0]
    prompts, conts = [t_sst.prompt(x) for x in sst["text"]], [v[0] for v in t_sst.verbalizer.values()]
    bank = load_classification("banking77").shuffle(seed=0).select(range(n_bank))
    t_bank = load_templates("banking77", bank.features["label"].names)[0]
    words = [v[0] for v in t_bank.verbalizer.values()]
    methods = {
        "sst2 naive (1 pair / forward)": lambda: score_naive(model, tok, prompts, conts).summed,
        "sst2 shared prefix, batch 1": lambda: score_labels(model, tok, prompts, conts, batch_size=1,
                                                            progress=False).summed,
        "sst2 shared prefix, batch 16": lambda: score_labels(model, tok, prompts, conts, batch_size=16,
                                                             progress=False).summed,
        "banking77 per-label rows, batch 16": lambda: verbalizer_logprobs(model, tok, bank["text"],
                                                                          t_bank.text,
                                                                          words, batch_size=16),
        "banking77 shared prefix, batch 16": lambda: score_labels(model, tok, [t_bank.prompt(x) for x in bank["text"]],
                                                                  words, batch_size=16, progress=False).summed,
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    outs: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            dt, outs[name] = timed(fn)
            times[name].append(dt)
    names = list(methods)
    diff_sst = max((outs[n] - outs[names[0]]).abs().max().item() for n in names[1:3])
    diff_bank = (outs[names[4]] - outs[names[3]]).abs().max().item()
    assert diff_sst <= 1e-4 and diff_bank <= 1e-4, (diff_sst, diff_bank)
    print(f"torch threads {torch.get_num_threads()}; SST-2 {n_sst} sentences x 2 labels, BANKING77 {n_bank} "
          f"queries x 77 labels; {rounds} rounds; max |shared - reference| {diff_sst:.1e} (SST-2), "
          f"{diff_bank:.1e} (BANKING77)")
    print("| method | median s | examples/s | speed-up vs its reference |")
    print("|---|---|---|---|")
    for name in names:
        ref = names[0] if name.startswith("sst2") else names[3]
        ratio = statistics.median(r / t for r, t in zip(times[ref], times[name]))
        n = n_sst if name.startswith("sst2") else n_bank
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {n / med:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
