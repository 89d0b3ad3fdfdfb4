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
    # Twice tiny's steps at the same batch of 32: about 7 passes over the 2,610 training instances the bundled
    # books give (masks are drawn afresh each pass). A step costs 4.3x tiny's (3.6 vs 0.8 GFLOP per sequence,
    # flops.training_flops_per_sequence), so this is a job for a GPU or a many-core CPU: on a busy 2-core CPU
    # a step took about 9 s.
    config.num_train_steps = 600
    config.log_every_steps = 50
    config.eval_every_steps = 200
    # 5e-4, half tiny's: the peak rate ELECTRA pretrains its hidden-256 "small" model with (Clark et al. 2020;
    # google-research/electra's configure_pretraining.py). Warmup stays 10% of the steps as in tiny.
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 60
    return config
