"""glue_rte: fine-tune on RTE (entailment), accuracy; small: 5 epochs.

bert-jax-finetune --config=experiments/glue_rte.py --workdir=/tmp/rte --config.init_from=DIR \\
  --config.data_dir=/path/to/glue

The settings of glue_sst2.py (the original paper's GLUE recipe) with this task. `data_dir` (required): the
GLUE root, one folder per task as GLUE's download script writes it.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(_HERE, "glue_sst2.py"))["get_config"](task="glue_rte")
    config.num_epochs = 5.0
    return config
