"""glue_sst2: fine-tune on SST-2 (binary sentiment), the GLUE recipe of the original BERT paper.

bert-jax-finetune --config=experiments/glue_sst2.py --workdir=/tmp/sst2 --config.init_from=/tmp/bert_tiny \\
  --config.data_dir=/path/to/glue

`data_dir` (required, no default): the GLUE root, one folder per task as GLUE's download script writes it
(`SST-2/train.tsv`, `SST-2/dev.tsv`, ...); a gs:// folder is copied to each host first.
`init_from`: a pretraining workdir of ours (its latest checkpoint), an export, or a Hugging Face BERT
directory; empty trains `model.size` from scratch (with `vocab_file`). The modern family
(`--config.model.family=modernbert`) starts from our modern pretraining workdir or its export/hf, or a
ModernBERT Hugging Face directory with a vocab.txt. Devlin et al. 2019, A.3: batch 32,
learning rate in {5e-5, 3e-5, 2e-5}, 3 epochs, warmup 10%, dropout 0.1. The other GLUE configs change the task
(and, for small tasks, the epochs).
"""

from __future__ import annotations

import ml_collections

from bert_jax.jobs import config as job_config


def get_config(task: str = "glue_sst2") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.job = "finetune"  # which job this config is for: "pretrain" or "finetune"
    config.task = task
    config.data_dir = ""  # required: the GLUE root, <data_dir>/SST-2/train.tsv, ... (the job names it when unset)
    config.eval_split = ""  # default: the task's dev split
    config.init_from = ""
    config.compilation_cache_dir = ""  # "" = <workdir>/jax_cache (restarts load compiled programs), "off", or a dir
    # The train and prediction steps are compiled before training and checked against the device's memory:
    # "check" stops a job that does not fit (with the changes that would), "auto" runs the first that fits.
    config.fit = "check"
    config.fit_memory_gb = 0.0  # 0 = the device's own limit (CPUs report none: the check runs only if set)
    config.fit_max_compiles = 6
    config.vocab_file = ""  # default: the tokenizer saved with init_from
    config.tokenizer_file = ""  # or a Hugging Face tokenizer.json (instead of vocab_file)
    config.lowercase = True
    config.seed = 0
    config.max_seq_length = 128
    config.global_batch_size = 32
    config.num_train_steps = 0  # 0: num_epochs over the training split
    config.num_epochs = 3.0
    config.learning_rate = 2e-5
    config.warmup_fraction = 0.1
    config.weight_decay = 0.01
    # The optimizer details around the gradients (bert_jax/finetune/recipes.py): "transformers" (what
    # transformers.Trainer does: Adam bias correction, eps 1e-8, linear decay from the warmup's end, a normal
    # head init) or "bert" (google-research/bert's run_classifier). Any of bias_correction, eps, b1, b2,
    # decay_from_warmup_end set here overrides the recipe's value.
    config.optimizer = job_config.optimizer_block()
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 500
    config.max_checkpoints_to_keep = 2
    # A save not published within this many seconds (a store that stopped answering) stops the job, naming
    # the last complete checkpoint; orbax would otherwise wait 20 minutes.
    config.checkpoint_timeout_seconds = 600

    config.model = ml_collections.ConfigDict()
    # "bert" or "modernbert" (the family of init_from: a ModernBERT Hugging Face directory or our modern
    # pretraining workdir). The model otherwise is init_from's, with the fields set here over it.
    config.model.family = "bert"
    config.model.size = "base"  # only without init_from
    config.model.dtype = "float32"
    config.model.hidden_dropout_prob = 0.1  # BERT's (not used by the modern family)
    config.model.attention_probs_dropout_prob = 0.1  # BERT's
    # The modern family's head (unset: init_from's config; not used by BERT): "cls" or "mean" pooling, and the
    # dropout before the classifier (its encoder's dropouts come from init_from, 0 in ModernBERT's).
    config.model.classifier_pooling = ml_collections.config_dict.placeholder(str)
    config.model.classifier_dropout = ml_collections.config_dict.placeholder(float)
    # What each encoder layer keeps for the backward pass: "none", "dots", "dots_no_batch" or "full" (recompute
    # the layer): memory for compute, the same numbers (BertConfig.remat_policy). `bert-jax-compile` and
    # `--config.fit=auto` pick it when a batch does not fit; the pretraining run's policy is not inherited.
    config.model.remat_policy = "none"
    # "xla", or on TPUs "splash" (with attention_probs_dropout_prob=0): bert_jax/models/attention.py. The kernel the
    # pretraining run used does not come with its weights.
    config.model.attention_kernel = "xla"

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    return config
