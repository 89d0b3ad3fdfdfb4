"""The networks: BERT and its named sizes, attention kernels, dropout, initializations, FLOP counts, and
conversion of weights to and from Hugging Face and Google's TF checkpoints.

May import: `bert_jax.sharding` (logical axis names) and `bert_jax.storage`. Nothing from data, training,
jobs, compile, the harness or the launcher; never torch.
"""
