"""The measurement harness: benchmarks, op profiles, storage timings, loss-curve plots, the GLUE table side
by side with transformers and its PyTorch reference run.

Stands beside the training system: it may import anything of bert_jax, and nothing of the training path
(models, data, training, finetune, jobs, compile) imports it. The PyTorch reference is the only module of
bert_jax that imports torch, and it runs as its own process.
"""
