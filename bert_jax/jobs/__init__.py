"""The jobs a user launches: pretraining and fine-tuning, from a config to a trained, checkpointed model.

May import everything of the training path (models, data, training, finetune) and compile (the fit check
before a run). Never the harness, the launcher, torch or absl FLAGS: tools/ parses flags and calls these.
"""
