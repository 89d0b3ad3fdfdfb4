"""bert_base_phase1: BERT-base, the original recipe (Devlin et al. 2019), phase 1: 900,000 steps at seq 128.

bert-jax-pretrain --config=experiments/bert_base_phase1.py --workdir=/shared/runs/base_p1 \
    --config.data.train_files='/shared/text/*.txt'

Or build the corpus once beforehand (bert-jax-build-corpus, Apache Beam at Wikipedia scale) and pass
`--config.data.corpus_dir=...` instead of `data.train_files`. On several hosts add `--distributed` and keep
the workdir (and the corpus) on a file system every host sees.

The paper (Appendix A.2): 1,000,000 steps of 256 sequences; 90% of them at sequence length 128, the last 10%
at 512 "to learn the positional embeddings"; Adam with learning rate 1e-4, b1 0.9, b2 0.999, L2 weight
decay 0.01, warmup over the first 10,000 steps, then linear decay; dropout 0.1. google-research/bert's
`optimization.py` adds eps 1e-6, no weight decay on LayerNorm and biases, gradients clipped to global norm
1.0 and an Adam without bias correction (`AdamWeightDecayOptimizer`); its README sets masked_lm_prob 0.15 and
max_predictions_per_seq to about max_seq_length * masked_lm_prob: 20 at seq 128, 80 at 512.

Choices:
- One schedule over both phases, as in the paper: the original's rate is 1e-4 * (1 - step / 1M) after
  warmup. With `end_learning_rate=1e-5` at step 900,000 (and the decay measured from step 0, as the original
  does) this phase reproduces exactly the first 900,000 steps of it; bert_base_phase2 continues from 1e-5
  down to 0. Run alone, this phase therefore ends at 1e-5, not 0.
- Token-level masking (`whole_word=False`), as the paper; `--config.data.whole_word=True` for whole-word
  masking (what google-research/bert's later `--do_whole_word_mask` models changed).
- dupe_factor 1: the original duplicated the data (dupe_factor 10) to get several static masks per
  instance; here masks are drawn at batch time, a new one in every epoch.
- bfloat16 compute (params and optimizer state stay float32); `--config.model.dtype=float32` for the
  original's all-float32 graph.
- Mesh: pure data parallelism over all devices (BERT-base's 110M params and Adam state fit any
  accelerator); the global batch of 256 must be a multiple of the device count.
"""

from __future__ import annotations

import os

import ml_collections

import bert_jax

BERT_UNCASED_VOCAB = os.path.join(os.path.dirname(bert_jax.__file__), "assets", "vocab.txt")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.job = "pretrain"  # which job this config is for: "pretrain" or "finetune"
    config.seed = 0
    config.num_train_steps = 900_000
    config.global_batch_size = 256
    config.num_microbatches = 1
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.eval_batches = 50  # 12,800 held-out sequences; 0 = the whole validation split
    config.peak_flops_per_device = 0.0  # 0 = measure a matmul at start-up
    config.export = True
    config.checkpoint_every_steps = 10_000  # also on the last step and when stopped by SIGTERM
    config.max_checkpoints_to_keep = 3
    # A save not published within this many seconds (a store that stopped answering) stops the job, naming
    # the last complete checkpoint; orbax would otherwise wait 20 minutes.
    config.checkpoint_timeout_seconds = 600
    config.init_from = ""  # warm start: a workdir/checkpoint of ours, an export or a Hugging Face BERT directory
    config.compilation_cache_dir = ""  # "" = <workdir>/jax_cache (restarts load compiled programs), "off", or a dir
    # Before the corpus build, the steps are compiled and their memory checked against the device's: "check" stops
    # a job that does not fit (with the changes that would), "auto" runs the best change that fits, "off" skips.
    config.fit = "check"
    config.fit_memory_gb = 0.0  # 0 = the device's own limit (CPUs report none: the check runs only if set)
    config.fit_max_compiles = 6  # changes compiled at most when it does not fit

    config.model = ml_collections.ConfigDict()
    config.model.size = "base"
    config.model.dtype = "bfloat16"
    config.model.hidden_dropout_prob = 0.1
    config.model.attention_probs_dropout_prob = 0.1
    # Vocabulary rows padded to a multiple of 128 (and of the tensor-parallel size, always): MXU-friendly
    # shapes, and a vocabulary that splits over "tensor". Exports strip the padding.
    config.model.vocab_pad_multiple = 128
    config.model.remat_policy = "none"  # or "full", "dots", "dots_no_batch": trade compute for memory
    # "xla", or on TPUs "splash" (Pallas flash attention: no [T, T] activations kept; needs
    # model.attention_probs_dropout_prob=0). See bert_jax/models/attention.py.
    config.model.attention_kernel = "xla"

    config.data = ml_collections.ConfigDict()
    config.data.train_files = ""  # required: your corpus (a glob or comma-separated list), or set corpus_dir
    config.data.vocab_file = BERT_UNCASED_VOCAB  # the released uncased vocab, 30,522 ids
    config.data.spm_model = ""
    config.data.tokenizer_file = ""  # or a Hugging Face tokenizer.json (then vocab_file = "")
    config.data.corpus_dir = ""  # a corpus built by bert-jax-build-corpus; then train_files is not read
    config.data.text_field = "text"  # JSON Lines, Parquet, save_to_disk inputs: the field holding the text
    config.data.lowercase = True
    config.data.max_seq_length = 128
    config.data.max_predictions_per_seq = 20
    config.data.masked_lm_prob = 0.15
    config.data.whole_word = False
    config.data.short_seq_prob = 0.1
    config.data.dupe_factor = 1
    config.data.eval_fraction = 0.01
    config.data.corpus_seed = 12345  # create_pretraining_data.py's random_seed
    config.data.num_shards = 0  # 0 = TFDS picks the shard count from the corpus size
    # Worker processes making the batches: -1 = one per 4 host cores (none below 8 cores: a laptop makes them in a
    # thread of the job), 0 = a thread, N = N processes. The batches are the same for any number.
    config.data.num_workers = -1

    # BERT's own initialization (bert_tiny.py's demo starts from a structured one, bert_jax/models/structured_init.py).
    # The objective: masked LM + this x NSP (1: BERT's; 0: the masked LM alone, as RoBERTa).
    config.nsp_loss_weight = 1.0

    config.initialization = ml_collections.ConfigDict()
    config.initialization.attention = "random"
    config.initialization.word_embeddings = "random"
    config.initialization.local_attention_logit = 8.0  # read by attention="local" only

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 10_000
    config.optimizer.total_steps = 0  # the schedule's length: 0 = num_train_steps (set apart: its first steps)
    config.optimizer.schedule = "linear"
    config.optimizer.power = 1.0
    config.optimizer.end_learning_rate = 1e-5  # = 1e-4 * (1 - 900k / 1M): see "One schedule over both phases"
    config.optimizer.decay_from_warmup_end = False
    config.optimizer.decay_steps = 0  # schedule="wsd" only: its final decay's length
    config.optimizer.decay_shape = "linear"  # schedule="wsd" only: or "one_minus_sqrt"
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-6
    config.optimizer.weight_decay = 0.01
    config.optimizer.fully_decoupled_weight_decay = False  # True: decay by wd * lr(step) / peak (ModernBERT's)
    config.optimizer.bias_correction = False
    config.optimizer.clip_global_norm = 1.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.dcn_data = 1
    return config
