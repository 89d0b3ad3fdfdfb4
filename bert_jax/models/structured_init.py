"""Structured initializations for small models trained from scratch in minutes (`config.initialization`).

BERT's own initialization (every kernel and embedding truncated normal, std 0.02) leaves a small model on the
unigram plateau for thousands of updates: at [MASK] it answers the most frequent word, because two things must
be learned before context helps and neither is learned early: attention that looks at the neighbours (the
plateau of shallow Transformers, Gopalani & Hu 2025), and word vectors in which related words are close. Both
can be given at step 0, as the weights of trained Transformers suggest (Trockman & Kolter, "Mimetic
Initialization of Self-Attention Layers", 2023, set the query-key product to the identity for the same reason):

- `attention="local"`: position embeddings of orthogonal sinusoids (each head's slice of the hidden vector holds
  `head_dim / 2` frequency pairs, pi (m + 1/2) / (head_dim / 2), so distinct positions up to 2 x head_dim apart
  are orthogonal), and in every layer head h's query and key kernels read that slice and rotate it by the head's
  offset (-1, +1, -2, +2, ...): head h attends to the token at its offset with a softmax logit of
  `local_attention_logit` over the others. Its value and output kernels are one random orthogonal projection
  and its transpose, scaled by `value_output_gain`, so the neighbour's vector reaches the residual stream.
- `word_embeddings="corpus"`: word vectors from the training split's co-occurrence counts (positive pointwise
  mutual information in a +-`window` token window, context counts smoothed by ^0.75, truncated SVD to the hidden
  size: Levy & Goldberg's classic recipe), scaled to `initializer_range`. Words the split never holds keep
  their random rows.

Only the initial weights change: the architecture, the exports and the fine-tuning are BERT's. Measured on the
demo (docs/demo.md): held-out accuracy at [MASK] 0.198 instead of 0.075 after 1,450 updates (at the earlier peak
rate 2e-3, with NSP); the demo's recipe today ends at 0.195-0.236 over five seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import threadpoolctl

from bert_jax.models.configs import BertConfig, ConfigError

ATTENTION_INITS = ("random", "local")
WORD_EMBEDDING_INITS = ("random", "corpus")


@dataclasses.dataclass(frozen=True)
class InitializationConfig:
    """`config.initialization` of a pretraining job; the defaults are BERT's own initialization."""

    attention: str = "random"
    word_embeddings: str = "random"
    position_scale: float = 0.2  # "local": each position embedding entry's amplitude
    local_attention_logit: float = 8.0  # "local": a head's logit for its offset's token over the others
    value_output_gain: float = 0.7  # "local": the value-output product is this times a projection
    window: int = 2  # "corpus": co-occurrence window, tokens on each side
    max_corpus_tokens: int = 5_000_000  # "corpus": counted from at most this many training tokens

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_INITS:
            raise ConfigError(
                f"initialization.attention={self.attention!r} is unknown; use one of {', '.join(ATTENTION_INITS)}."
            )
        if self.word_embeddings not in WORD_EMBEDDING_INITS:
            raise ConfigError(
                f"initialization.word_embeddings={self.word_embeddings!r} is unknown; use one of "
                f"{', '.join(WORD_EMBEDDING_INITS)}."
            )
        if self.window < 1 or self.max_corpus_tokens < 1000:
            raise ConfigError("initialization.window must be >= 1 and max_corpus_tokens >= 1000.")
        if not 0 < self.local_attention_logit <= 30:
            raise ConfigError(
                f"initialization.local_attention_logit={self.local_attention_logit} must be in (0, 30] "
                "(a head's logit for its neighbour; beyond 30 the softmax is one-hot and passes no gradient)."
            )

    @property
    def is_default(self) -> bool:
        return self.attention == "random" and self.word_embeddings == "random"

    def check_model(self, model: BertConfig, max_seq_length: int) -> None:
        """Raises before any compile when "local" cannot serve the model or the sequence length."""
        if self.attention != "local":
            return
        if model.head_dim % 2:
            raise ConfigError(f'initialization.attention="local" needs an even head size, not {model.head_dim}.')
        if max_seq_length > 2 * model.head_dim:
            raise ConfigError(
                f'initialization.attention="local" keeps positions apart only up to 2 x head_dim = '
                f"{2 * model.head_dim} tokens; max_seq_length is {max_seq_length}. Use "
                'initialization.attention="random" for long sequences (or shorter sequences).'
            )


def initialization_config(section: Mapping[str, Any] | None) -> InitializationConfig:
    """`config.initialization` (absent: BERT's own initialization); unknown keys are an error."""
    values = dict(section or {})
    fields = {field.name for field in dataclasses.fields(InitializationConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"Unknown initialization setting(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}."
        )
    return InitializationConfig(**values)


def head_offsets(num_heads: int) -> list[int]:
    """-1, +1, -2, +2, ...: the token each head of a "local" layer attends to, relative to its own."""
    return [(h // 2 + 1) * (-1 if h % 2 == 0 else 1) for h in range(num_heads)]


Leaves = dict[tuple[str, ...], np.ndarray]  # param path -> its full initial value


def structured_leaves(
    model: BertConfig,
    init: InitializationConfig,
    seed: int,
    training_tokens: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
    special_ids: Iterable[int] = (),
) -> Leaves:
    """The initial values `init` gives, by param path; the params not named keep the model's initializers.

    `training_tokens()` yields the training split's (flat tokens, lengths) batches, for "corpus".
    """
    leaves: Leaves = {}
    if init.attention == "local":
        leaves.update(local_attention(model, init, seed))
    if init.word_embeddings == "corpus":
        if training_tokens is None:
            raise ValueError('initialization.word_embeddings="corpus" needs the training split\'s tokens.')
        table, seen = cooccurrence_embeddings(
            training_tokens(), model.vocab_size, model.hidden_size, special_ids, init.window, model.initializer_range
        )
        rng = np.random.default_rng(seed)
        rows = rng.standard_normal((model.padded_vocab_size, model.hidden_size)).clip(-2, 2) * model.initializer_range
        rows[: model.vocab_size][seen] = table[seen]
        leaves[("bert", "embeddings", "word_embeddings", "embedding")] = rows.astype(np.float32)
    return leaves


def local_attention(model: BertConfig, init: InitializationConfig, seed: int) -> Leaves:
    """The "local" position embeddings and every layer's query, key, value and attention-output kernels."""
    heads, head_dim, hidden = model.num_attention_heads, model.head_dim, model.hidden_size
    pairs = head_dim // 2
    frequencies = np.pi * (np.arange(pairs) + 0.5) / pairs
    angles = np.arange(model.max_position_embeddings)[:, None] * frequencies
    block = np.empty((model.max_position_embeddings, head_dim), np.float32)
    block[:, 0::2], block[:, 1::2] = np.cos(angles), np.sin(angles)
    leaves: Leaves = {
        ("bert", "embeddings", "position_embeddings", "embedding"): (
            init.position_scale * np.tile(block, (1, heads))
        ).astype(np.float32)
    }
    # On position vectors alone (LayerNorm makes each entry about +-1) a head's logit for its offset's token is
    # scale^2 x head_dim / sqrt(head_dim), and about 0 for every other token.
    scale = np.sqrt(init.local_attention_logit / np.sqrt(head_dim))
    gain = np.sqrt(init.value_output_gain)
    rng = np.random.default_rng(seed)
    for layer in range(model.num_hidden_layers):
        query = np.zeros((hidden, heads, head_dim), np.float32)
        key, value = np.zeros_like(query), np.zeros_like(query)
        output = np.zeros((heads, head_dim, hidden), np.float32)
        for head, offset in enumerate(head_offsets(heads)):
            read = np.zeros((hidden, head_dim), np.float32)
            read[head * head_dim : (head + 1) * head_dim] = np.eye(head_dim, dtype=np.float32)
            # Rotating each key pair by offset x frequency makes q_i . k_j = sum_m cos(freq_m (i - j + offset)):
            # head_dim / 2 at j = i + offset, 0 at every other j within 2 x head_dim.
            cos, sin = np.cos(frequencies * offset), np.sin(frequencies * offset)
            rotation = np.zeros((head_dim, head_dim), np.float32)
            rotation[0::2, 0::2] = np.diag(cos)
            rotation[0::2, 1::2] = np.diag(-sin)
            rotation[1::2, 0::2] = np.diag(sin)
            rotation[1::2, 1::2] = np.diag(cos)
            query[:, head] = scale * read
            key[:, head] = scale * read @ rotation
            projection, _ = np.linalg.qr(rng.standard_normal((hidden, head_dim)))
            value[:, head] = gain * projection
            output[head] = gain * projection.T
        prefix = ("bert", "encoder", f"layer_{layer}", "attention")
        leaves[(*prefix, "self", "query", "kernel")] = query
        leaves[(*prefix, "self", "key", "kernel")] = key
        leaves[(*prefix, "self", "value", "kernel")] = value
        leaves[(*prefix, "output", "dense", "kernel")] = output
    return leaves


def cooccurrence_embeddings(
    instances: Iterable[tuple[np.ndarray, np.ndarray]],
    vocab_size: int,
    dim: int,
    special_ids: Iterable[int],
    window: int = 2,
    std: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """(table [vocab_size, dim] float32, seen [vocab_size] bool): the top `dim` singular directions of the PPMI
    matrix (`positive_pmi`), each scaled by the root of its singular value, then all to std `std`."""
    ppmi = positive_pmi(instances, vocab_size, special_ids, window)
    seen = np.diff(ppmi.indptr) > 0  # words with at least one positive-PMI context
    ids = np.flatnonzero(seen)
    if len(ids) <= dim:
        raise ConfigError(
            f'initialization.word_embeddings="corpus" found {len(ids)} words with contexts in the training split, '
            f'too few for {dim}-dimensional vectors; use initialization.word_embeddings="random".'
        )
    ppmi = ppmi[ids][:, ids]  # the SVD of the words the split holds only (a third of BERT's vocab in the demo)
    # One BLAS thread: the products are small and memory-bound, and OpenBLAS's threads spin-wait for a core; beside
    # any other busy process (an input pipeline, a second job) the threaded SVD ran 14x slower here (58 s vs 4 s).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        u, s = _top_singular_vectors(ppmi, dim)
    vectors = u * np.sqrt(s)
    table = np.zeros((vocab_size, dim), np.float32)
    table[ids] = vectors * (std / vectors.std())
    return table, seen


def positive_pmi(
    instances: Iterable[tuple[np.ndarray, np.ndarray]], vocab_size: int, special_ids: Iterable[int], window: int = 2
) -> Any:
    """The [vocab_size, vocab_size] CSR matrix max(0, log(p(w, c) / (p(w) p_0.75(c)))) of word-context pairs
    within +-`window` tokens, counted in both directions.

    `instances` yields (flat tokens, lengths) batches; pairs never cross an instance or touch a special token.
    """
    import scipy.sparse

    special = np.zeros(vocab_size, bool)
    special[[i for i in special_ids if 0 <= i < vocab_size]] = True
    counts = scipy.sparse.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    for tokens, lengths in instances:
        owner = np.repeat(np.arange(len(lengths)), lengths)
        rows, cols = [], []
        for offset in range(1, window + 1):
            keep = (owner[:-offset] == owner[offset:]) & ~special[tokens[:-offset]] & ~special[tokens[offset:]]
            left, right = tokens[:-offset][keep], tokens[offset:][keep]
            rows += [left, right]
            cols += [right, left]
        row, col = np.concatenate(rows), np.concatenate(cols)
        counts = counts + scipy.sparse.csr_matrix((np.ones(len(row)), (row, col)), shape=(vocab_size, vocab_size))
    word = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** 0.75
    counts = counts.tocoo()
    # log(p(w, c) / (p(w) p_0.75(c))): PMI with the context distribution smoothed (rare contexts count less).
    pmi = np.log(counts.data * context.sum() / (word[counts.row] * context[counts.col] + 1e-30))
    keep = pmi > 0
    return scipy.sparse.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)


def _top_singular_vectors(matrix: Any, k: int, oversample: int = 32, power_steps: int = 16) -> tuple[Any, Any]:
    """(u [n, k], s [k]) of a sparse matrix by a randomized range finder (Halko, Martinsson & Tropp 2011): sparse
    products with a [n, k + oversample] block. A PPMI matrix's spectrum falls slowly, so it takes 16 power steps to
    match an exact SVD (3 left the demo at 0.176 at [MASK], 16 give ARPACK's 0.198 in 0.3 s more on the demo's
    corpus). A fixed seed makes it the same on every host."""
    columns = min(k + oversample, *matrix.shape)
    probe = np.random.default_rng(0).standard_normal((matrix.shape[1], columns))
    basis = _orthonormal(matrix @ probe)
    for _ in range(power_steps):  # sharpen the spectrum: (A A^T)^q A
        basis = _orthonormal(matrix @ _orthonormal(matrix.T @ basis))
    u_small, s, _ = np.linalg.svd((matrix.T @ basis).T, full_matrices=False)
    return (basis @ u_small)[:, :k], s[:k]


def _orthonormal(block: Any) -> Any:
    """An orthonormal basis of a tall block's columns by CholeskyQR2 through the small Gram matrix: matrix
    products only (LAPACK's Householder QR of a [10k, 160] block is 10x slower, 100x on a busy CPU)."""
    for _ in range(2):  # the second pass restores orthogonality to float64 precision
        values, vectors = np.linalg.eigh(block.T @ block)
        block = block @ (vectors / np.sqrt(np.maximum(values, values.max() * 1e-12)))
    return block
