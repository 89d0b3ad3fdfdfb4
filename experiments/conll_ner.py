"""conll_ner: fine-tune on CoNLL-2003 named entities (PER, LOC, ORG, MISC), entity-level F1 (conlleval).

bert-jax-finetune --config=experiments/conll_ner.py --workdir=/tmp/ner --config.init_from=DIR \\
  --config.data_dir=/path/to/conll2003

Token classification with the label on each word's first wordpiece; evaluated on valid.txt
(--config.eval_split=test for the test file). Devlin et al. 2019 (5.3) fine-tune NER with the GLUE-like
recipe; 3 epochs at 5e-5 and batch 32 is the common setting. `data_dir` (required): the folder with
train.txt, valid.txt and test.txt (IOB2 tags, one token per line).
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(_HERE, "glue_sst2.py"))["get_config"](task="conll_ner")
    config.data_dir = ""  # required: the folder with train.txt, valid.txt, test.txt
    config.lowercase = True  # must match the vocabulary of init_from (False for a cased model)
    config.learning_rate = 5e-5
    return config
