"""Pretraining data: next-sentence instances from documents (`instances`) and dynamic masked-LM masking (`masking`).

Everything here is plain numpy: no TensorFlow, no JAX. Instances are created once per document (streaming, with
memory bounded by a few documents); masks are drawn at batch time, as a pure function of (seed, epoch, example
index), so every epoch sees a fresh mask and every process agrees on it.
"""
