"""bert_mini: BERT-mini (L4/H256, Turc et al. 2019) on the bundled corpus; bert_tiny's job, a bit bigger and longer.

bert-jax-pretrain --config=experiments/bert_mini.py --workdir=/tmp/bert_mini

Everything not set here is bert_tiny's. config_flags loads a config file by its path (experiments/ is no
package), so a relative import does not work: the sibling file is run by path with `runpy.run_path`, which
works from any working directory and under config_flags, runpy and importlib alike.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling_config(filename: str) -> ml_collections.ConfigDict:
    """`get_config()` of another file in experiments/, loaded by path."""
    return runpy.run_path(os.path.join(_HERE, filename))["get_config"]()


def get_config() -> ml_collections.ConfigDict:
    config = _sibling_config("bert_tiny.py")
    config.model.size = "mini"
    # Sequences of 128 in batches of 32 (tiny's demo trains on 64-token sequences): about 7 passes over the
    # 2,610 training instances the bundled books give at this length (masks are drawn afresh each pass). A step
    # costs about 3.6 GFLOP per sequence (flops.training_flops_per_sequence), so this is a job for a GPU or a
    # many-core CPU: on a busy 2-core CPU a step took about 9 s.
    config.data.max_seq_length = 128
    config.data.max_predictions_per_seq = 20
    config.global_batch_size = 32
    config.num_train_steps = 600
    config.log_every_steps = 50
    config.eval_every_steps = 200
    config.eval_batches = 4
    config.checkpoint_every_steps = 100
    # 5e-4: the peak rate ELECTRA pretrains its hidden-256 "small" model with (Clark et al. 2020;
    # google-research/electra's configure_pretraining.py). Warmup: 10% of the steps.
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 60
    # BERT's own initialization: the demo's structured one is measured on tiny only.
    config.nsp_loss_weight = 1.0  # BERT's objective; the demo's MLM-only choice is measured on tiny only
    config.initialization.attention = "random"
    config.initialization.word_embeddings = "random"
    return config
