"""Ahead-of-time compilation: the TPU/GPU program of a job compiled without running it, whether it fits a
chip's memory (and the cheapest changes that do), the largest batch that fits, TPU slice topologies, and
the collectives in an HLO module.

May import: models, data, training, finetune and the top-level modules. Never jobs, the harness, the
launcher, torch or absl FLAGS.
"""
