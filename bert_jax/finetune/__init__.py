"""Fine-tuning: GLUE, SQuAD v1.1/v2.0 and CoNLL-2003 NER on a pretrained encoder.

  * `tasks`, `heads`: what a task feeds the model and the classification / span / token heads on BERT.
  * `plan`: the fine-tuning plan (model, optimizer, mesh, steps) that the job, the fit check and the
    compile tool build, as they build the pretraining plan.
  * `recipes`: the published fine-tuning recipes (learning rates, epochs, warmup) by task.
  * `predict`: predictions from a fine-tuned checkpoint, for the command line and for export.
  * `metrics`: classification and regression metrics, the GLUE per-task metric sets, the official SQuAD
    scoring (v1.1 and v2.0 rules) and entity-level NER precision/recall/F1 (conlleval semantics).
  * `glue_data`, `conll_data`, `squad_data`: the readers and fixed-shape features of each benchmark.

May import: models, data, training and the top-level modules. Never jobs, compile, the harness, the
launcher, torch or absl FLAGS.
"""
