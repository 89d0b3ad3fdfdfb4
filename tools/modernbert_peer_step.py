"""The peer of the modern family's train step: transformers' ModernBertForMaskedLM trained by PyTorch.

  python tools/modernbert_peer_step.py --size=base --seq=512 --batch=4 --steps=3 --warmup=1

One masked-LM training step as ModernBERT's own trainer runs it on a CPU: `attn_implementation="sdpa"` (the
flash-attention path needs a GPU), `sparse_prediction=True` (its pretraining configs gather the masked positions
before the head, as our step does), float32, AdamW over every parameter, all of the host's cores as torch
threads. The batch is what `bert-jax-benchmark` feeds ours for the same shapes: full-length rows of random ids,
`round(masked_lm_prob x seq)` masked positions per row. Prints one JSON line: step times (median, min, max),
sequences and tokens per second, the loss before and after.

This is the measurement harness's peer, not part of the library (it imports torch): docs/modernbert.md shows the
side-by-side run with `bert-jax-benchmark --config=experiments/modernbert_base.py` and the commands.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

_SIZES = {  # (layers, hidden, intermediate, heads): bert_jax/models/modernbert_config.py's named sizes
    "tiny": (4, 128, 192, 2),
    "ettin_17m": (7, 256, 384, 4),
    "base": (22, 768, 1152, 12),
    "large": (28, 1024, 2624, 16),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("size", "base", list(_SIZES), "The modern family's named size.")
flags.DEFINE_integer("seq", 512, "Tokens per sequence.")
flags.DEFINE_integer("batch", 4, "Sequences per step.")
flags.DEFINE_integer("vocab", 50368, "Vocabulary size (ModernBERT's).")
flags.DEFINE_integer("local_attention", 128, "The local layers' window.")
flags.DEFINE_float("masked_lm_prob", 0.3, "Share of each row's positions predicted (ModernBERT: 30%).")
flags.DEFINE_integer("steps", 3, "Timed steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed steps before the timed ones.", lower_bound=0)
flags.DEFINE_enum("attention", "sdpa", ["sdpa", "eager"], "transformers' attention implementation.")
flags.DEFINE_bool("sparse_prediction", True, "Gather the masked positions before the MLM head (ModernBERT's).")


def main(argv: list[str]) -> None:
    del argv
    import numpy as np
    import torch
    import transformers

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers, hidden, intermediate, heads = _SIZES[FLAGS.size]
    config = transformers.ModernBertConfig(
        vocab_size=FLAGS.vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        local_attention=FLAGS.local_attention,
        max_position_embeddings=max(FLAGS.seq, 512),
        sparse_prediction=FLAGS.sparse_prediction,
        attn_implementation=FLAGS.attention,
        reference_compile=False,
    )
    model = transformers.ModernBertForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(5, FLAGS.vocab, (FLAGS.batch, FLAGS.seq)))
    labels = torch.full_like(ids, -100)
    predicted = round(FLAGS.masked_lm_prob * FLAGS.seq)
    for row in range(FLAGS.batch):
        where = torch.from_numpy(rng.choice(FLAGS.seq, predicted, replace=False))
        labels[row, where] = ids[row, where]
    mask = torch.ones_like(ids)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    losses = [step() for _ in range(FLAGS.warmup)]
    times = []
    for i in range(FLAGS.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
        print(f"[modernbert_peer_step] step {i + 1}/{FLAGS.steps}: {times[-1] * 1e3:.0f} ms", file=sys.stderr)
    median = statistics.median(times)
    result = {
        "impl": "transformers_torch",
        "size": FLAGS.size,
        "seq": FLAGS.seq,
        "batch": FLAGS.batch,
        "masked_per_seq": predicted,
        "attention": FLAGS.attention,
        "sparse_prediction": FLAGS.sparse_prediction,
        "num_params": sum(p.numel() for p in model.parameters()),
        "step_ms_median": median * 1e3,
        "step_ms_min": min(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "sequences_per_sec": FLAGS.batch / median,
        "tokens_per_sec": FLAGS.batch * FLAGS.seq / median,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "torch_threads": threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
