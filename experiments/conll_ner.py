"""conll_ner: fine-tune on CoNLL-2003 named entities (PER, LOC, ORG, MISC), entity-level F1 (conlleval).

bert-jax-finetune --config=experiments/conll_ner.py --workdir=/tmp/ner --config.init_from=DIR

Token classification with the label on each word's first wordpiece; evaluated on valid.txt
(--config.eval_split=test for the test file). Devlin et al. 2019 (5.3) fine-tune NER with the GLUE-like
recipe; 3 epochs at 5e-5 and batch 32 is the common setting.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(_HERE, "glue_sst2.py"))["get_config"](task="conll_ner")
    config.data_dir = os.path.normpath(os.path.join(_HERE, "..", "..", "shared", "data", "conll2003"))
    config.lowercase = True  # must match the vocabulary of init_from (False for a cased model)
    config.learning_rate = 5e-5
    return config
