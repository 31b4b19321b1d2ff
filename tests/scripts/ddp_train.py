"""Train a tiny GPT-2 with lib.training.train and write rank 0's history as JSON (run under torchrun or alone)."""
import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import GPT2Config, GPT2LMHeadModel

from lib.training import TrainConfig, pack, train

batch_size, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
docs = [[(i * 7 + j) % 97 + 3 for j in range(20 + i % 13)] for i in range(400)]
blocks = pack(docs, 32, 0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64,
                                   bos_token_id=0, eos_token_id=0))
history = train(model, blocks[:-16], blocks[-16:],
                TrainConfig(max_steps=30, batch_size=batch_size, lr=3e-3, eval_every=15, log_every=10, progress=False))
if int(os.environ.get("RANK", 0)) == 0:
    with open(out, "w") as f:
        json.dump({"world": int(os.environ.get("WORLD_SIZE", 1)), "history": list(history)}, f)
if dist.is_initialized():  # leave together: a rank that exits while the other still talks to it aborts (SIGABRT)
    dist.barrier()
    dist.destroy_process_group()
