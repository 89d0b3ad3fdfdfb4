"""squad: fine-tune on SQuAD v1.1 extractive question answering, exact match and F1.

bert-jax-finetune --config=experiments/squad.py --workdir=/tmp/squad --config.init_from=DIR \\
  --config.data_dir=/path/to/squad

The original run_squad settings: seq 384, doc stride 128, max query 64, batch 32, 3e-5, 2 epochs, n-best 20,
max answer 30. `data_dir` (required): the folder with the SQuAD json files. With `squad.train_file` empty (only
dev-v1.1.json at hand), the dev file is split BY ARTICLE into a training part and a held-out eval part
(`squad.eval_fraction`, seed `squad.split_seed`): figures from that split are not comparable with the
official dev-set scores. With the real files:
--config.squad.train_file=train-v1.1.json --config.squad.dev_file=dev-v1.1.json.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(_HERE, "glue_sst2.py"))["get_config"](task="squad")
    config.data_dir = ""  # required: the folder with squad.dev_file (and squad.train_file)
    config.max_seq_length = 384
    config.learning_rate = 3e-5
    config.num_epochs = 2.0
    config.squad = ml_collections.ConfigDict()
    config.squad.doc_stride = 128
    config.squad.max_query_length = 64
    config.squad.n_best_size = 20
    config.squad.max_answer_length = 30
    config.squad.version_2_with_negative = False
    config.squad.eval_fraction = 0.2
    config.squad.split_seed = 0
    config.squad.train_file = ""
    config.squad.dev_file = "dev-v1.1.json"
    return config
