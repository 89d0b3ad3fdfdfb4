"""The training system: the pretraining plan (what a job compiles), train and eval steps, optimizers,
losses, the step loop, checkpoints, warm start, export, preemption, the metrics log, the compile cache.

May import: models, data, and the top-level modules (`sharding`, `storage`, `tokenizers`). Never the
harness, the launcher, jobs, compile, torch or absl FLAGS.
"""
