"""bert_large_lamb: BERT-large with LAMB at a global batch of 65,536 sequences of 128 tokens (phase 1).

bert-jax-pretrain --config=experiments/bert_large_lamb.py --workdir=/shared/runs/large_lamb \
    --config.data.corpus_dir=/shared/corpus128 --distributed

You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes" (arXiv:1904.00962,
ICLR 2020), Section 4 and Table 1: BERT-large trained in two phases with a mixed batch, 65,536 sequences at
seq 128 then 32,768 at seq 512, 8,599 updates in all instead of the original's 1M at 256 (76 minutes on a
1,024-chip TPUv3 pod); LAMB with b1 0.9 and b2 0.999 (Algorithm 2, with Adam's bias correction); data and
model as Devlin et al. The per-phase numbers are those of the public reproduction of that 64K/32K schedule,
NVIDIA's DeepLearningExamples BERT (its LAMB pretraining scripts' defaults): phase 1 is 7,038 updates at a
peak rate of 6e-3, warmup 28.43% of them (2,000 steps, the value their TensorFlow script passes), then decay
as 6e-3 * (1 - step / 7,038) ** 0.5 (their PyTorch `PolyWarmUpScheduler`); eps 1e-6, weight decay 0.01 (not
on LayerNorm and biases, which LAMB also leaves without a trust ratio), gradients clipped to global norm 1.0.

Phase 2 (seq 512) is this file with
    --config.global_batch_size=32768 --config.num_train_steps=1563 --config.data.max_seq_length=512
    --config.data.max_predictions_per_seq=80 --config.optimizer.learning_rate=4e-3
    --config.optimizer.warmup_steps=200 --config.init_from=<phase-1 workdir>
(NVIDIA's phase 2: 1,563 updates, 12.8% warmup), started from phase 1's weights (`init_from`: the
parameters of its latest checkpoint, a fresh optimizer).

Memory: one microbatch is global_batch_size / num_microbatches sequences, 65,536 / (devices *
num_microbatches) per device. The default, 8, gives 32 per device on 256 devices (a TPU v4-512 or v5p-512
slice, 256 chips; or 32 hosts with 8 GPUs); for N devices use 2,048 / N (64 devices: 32; 8 GPUs: 256). 32 per
device is what the paper's pod ran at seq 128 (65,536 over the 2,048 cores of 1,024 TPUv3 chips, 2,048 JAX
devices; "the memory limit of a TPUv3 pod", says the paper's first version), and it needs 32 GB+ devices here (TPU v4/v5p chips, 40/80 GB GPUs): XLA's
compile-time memory analysis of this step on CPU (bf16, one device) gives 0.49 GB per sequence + 0.7 GB of
temporaries, about 16 GB at 32. On 16 GB devices (TPU v3 cores, 16 GB GPUs) take 16 per device: twice the
microbatches. Phase 2 at the paper's 16 sequences of 512 per device: num_microbatches 2,048 / N again.
Params and LAMB's two moments are float32 (12 bytes per parameter, 4.0 GB for BERT-large's 336M, plus the
gradients while a step runs); `mesh.fsdp=8` shards them eight ways (ZeRO-3). The batch is split over
data x fsdp, so every device still takes its own rows; each microbatch must divide by the device count.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling_config(filename: str) -> ml_collections.ConfigDict:
    """`get_config()` of another file in experiments/, loaded by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))["get_config"]()


def get_config() -> ml_collections.ConfigDict:
    # The data and model settings of the original recipe (seq 128, 20 predictions, dropout 0.1, ...).
    config = _sibling_config("bert_base_phase1.py")
    config.num_train_steps = 7_038
    config.global_batch_size = 65_536
    config.num_microbatches = 8  # 32 sequences per device per microbatch on 256 devices: see Memory above
    config.log_every_steps = 10
    config.eval_every_steps = 1_000
    config.eval_batches = 1  # one global batch: 65,536 held-out sequences

    config.model.size = "large"
    config.model.dtype = "bfloat16"

    config.optimizer.name = "lamb"
    config.optimizer.learning_rate = 6e-3
    config.optimizer.warmup_steps = 2_000  # 28.43% of 7,038
    config.optimizer.schedule = "polynomial"
    config.optimizer.power = 0.5
    config.optimizer.end_learning_rate = 0.0
    config.optimizer.decay_from_warmup_end = False
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-6
    config.optimizer.weight_decay = 0.01
    config.optimizer.bias_correction = True
    config.optimizer.clip_global_norm = 1.0

    config.mesh.data = -1
    config.mesh.fsdp = 8
    config.mesh.tensor = 1
    return config
