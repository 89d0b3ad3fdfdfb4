"""Fine-tuning data and metrics: GLUE, SQuAD v1.1/v2.0 and CoNLL-2003 NER.

Pure Python/numpy, no model code:

  * `metrics`: classification and regression metrics, the GLUE per-task metric sets, the official SQuAD
    scoring (v1.1 and v2.0 rules) and entity-level NER precision/recall/F1 (conlleval semantics).
  * `glue_data`: GLUE TSV readers and fixed-shape sentence(-pair) classification features.
  * `conll_data`: the CoNLL-2003 column-format reader and token-classification features (first-piece labels).
  * `squad_data`: the SQuAD JSON reader, a by-article split, windowed question-answering features and the
    n-best span decoding that turns start/end logits back into answer text.
"""
