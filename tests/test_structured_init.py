"""`config.initialization` (bert_jax/models/structured_init.py): the structured start of the demo.

- "local": computed in numpy from the initialized weights (embeddings, LayerNorm, query/key kernels; not the
  model's code), each head of the model puts most of its attention on the token at its offset, for real word
  ids; the model's own forward pass with these params runs and its outputs depend on the neighbours.
- "corpus": PPMI by hand on a corpus of a few words, pairs across instances and special tokens excluded; words
  with the same contexts get the same direction; words never seen are reported unseen.
- The config's errors, before anything compiles.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from bert_jax.models import configs, structured_init
from bert_jax.models.bert import BertForPreTraining, init_params
from bert_jax.models.configs import ConfigError


def _tiny(**overrides) -> configs.BertConfig:
    return configs.named_config("tiny", vocab_size=512, max_position_embeddings=128, **overrides)


def _with_leaves(params, leaves):
    params = jax.tree_util.tree_map(np.asarray, params)
    for path, value in leaves.items():
        target = params
        for name in path[:-1]:
            target = target[name]
        assert target[path[-1]].shape == value.shape, path
        target[path[-1]] = value
    return params


def _layer_norm(x, scale, bias, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def test_head_offsets_alternate_left_and_right():
    assert structured_init.head_offsets(4) == [-1, 1, -2, 2]


def test_local_heads_attend_to_their_offset_for_real_words():
    model = _tiny()
    init = structured_init.InitializationConfig(attention="local")
    params = init_params(BertForPreTraining(model), jax.random.key(0))
    params = _with_leaves(params, structured_init.structured_leaves(model, init, seed=0))
    emb = params["bert"]["embeddings"]
    ids = np.random.default_rng(1).integers(1000 % 512, 512, size=64)
    x = emb["word_embeddings"]["embedding"][ids] + emb["position_embeddings"]["embedding"][:64]
    x = x + emb["token_type_embeddings"]["embedding"][0]
    x = _layer_norm(x, emb["LayerNorm"]["scale"], emb["LayerNorm"]["bias"])
    attention = params["bert"]["encoder"]["layer_0"]["attention"]["self"]
    for head, offset in enumerate(structured_init.head_offsets(model.num_attention_heads)):
        q = x @ attention["query"]["kernel"][:, head] + attention["query"]["bias"][head]
        k = x @ attention["key"]["kernel"][:, head] + attention["key"]["bias"][head]
        scores = q @ k.T / np.sqrt(model.head_dim)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        rows = np.arange(64)[(np.arange(64) + offset >= 0) & (np.arange(64) + offset < 64)]
        on_target = probs[rows, rows + offset]
        assert np.median(on_target) > 0.8, (head, np.median(on_target))
        assert (probs[rows].argmax(-1) == rows + offset).mean() > 0.95


def test_local_init_runs_in_the_model_and_makes_a_mask_see_its_neighbours():
    model = _tiny()
    init = structured_init.InitializationConfig(attention="local")
    module = BertForPreTraining(model)
    params = init_params(module, jax.random.key(0))
    local = _with_leaves(params, structured_init.structured_leaves(model, init, seed=0))
    ids = np.full((1, 16), 7, np.int32)
    changed = ids.copy()
    changed[0, 4] = 9  # the left neighbour of position 5
    far = ids.copy()
    far[0, 12] = 9

    def hidden(p, x):
        out = module.apply({"params": p}, x, masked_lm_positions=np.array([[5]]), deterministic=True)
        return np.asarray(out.mlm_logits[0, 0])

    near_change = np.abs(hidden(local, changed) - hidden(local, ids)).mean()
    far_change = np.abs(hidden(local, far) - hidden(local, ids)).mean()
    assert near_change > 5 * far_change, (near_change, far_change)


def test_cooccurrence_embeddings_by_hand():
    # Words 1 and 2 occur in the same contexts (between 5 and 6), word 3 only with 4; 0 is a special token.
    # Pairs across the two instances (6 | 3) and with the special token are not counted.
    tokens = np.array([5, 1, 6, 5, 2, 6, 5, 1, 6, 0, 3, 4, 3, 4, 4, 3, 5, 2, 6], np.int32)
    lengths = np.array([16, 3])
    table, seen = structured_init.cooccurrence_embeddings([(tokens, lengths)], 10, 3, [0], window=1, std=0.02)
    assert seen.tolist() == [False, True, True, True, True, True, True, False, False, False]
    assert np.allclose(table[~seen], 0.0)
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    assert unit[1] @ unit[2] > 0.99  # same contexts, same direction
    assert abs(unit[1] @ unit[3]) < 0.2  # disjoint contexts
    assert abs(table[seen].std() - 0.02) < 1e-6


def test_positive_pmi_by_hand():
    # Instance 1: a b a c (window 1); instance 2: b c. 0 is special: [0] a b is the first instance in full.
    a, b, c = 1, 2, 3
    tokens = np.array([0, a, b, a, c, b, c], np.int32)
    ppmi = structured_init.positive_pmi([(tokens, np.array([5, 2]))], 4, [0], window=1).toarray()
    # Pairs, both directions: (a,b) x2, (a,c), (b,c) -> counts ab=ba=2, ac=ca=1, bc=cb=1.
    counts = np.zeros((4, 4))
    for x, y, n in [(a, b, 2), (a, c, 1), (b, c, 1)]:
        counts[x, y] = counts[y, x] = n
    word = counts.sum(1)
    context = counts.sum(0) ** 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log(counts * context.sum() / np.outer(word, context))
    expected = np.where(counts > 0, np.maximum(expected, 0.0), 0.0)
    np.testing.assert_allclose(ppmi, expected, rtol=1e-12, atol=1e-12)
    assert ppmi[0].sum() == 0 and ppmi[:, 0].sum() == 0  # the special token


def test_config_errors_name_the_setting():
    with pytest.raises(
        ConfigError, match=re.escape("initialization.attention='nearby' is unknown; use one of random, local")
    ):
        structured_init.initialization_config({"attention": "nearby"})
    with pytest.raises(ConfigError, match="Unknown initialization setting"):
        structured_init.initialization_config({"atention": "local"})
    with pytest.raises(ConfigError, match=re.escape("initialization.local_attention_logit=0 must be in (0, 30]")):
        structured_init.initialization_config({"attention": "local", "local_attention_logit": 0})
    init = structured_init.initialization_config({"attention": "local"})
    with pytest.raises(ConfigError, match="up to 2 x head_dim = 128 tokens; max_seq_length is 512"):
        init.check_model(_tiny(), 512)
    assert structured_init.initialization_config(None).is_default


def test_the_job_rejects_a_bad_initialization_before_it_builds_anything(tmp_path):
    import runpy

    from bert_jax.jobs import config as job_config
    from bert_jax.jobs import pretrain_plan
    from tests.conftest import REPO_ROOT

    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    config.data.max_seq_length = 512
    config.data.max_predictions_per_seq = 20
    with pytest.raises(ConfigError, match=re.escape('initialization.attention="random" for long sequences')):
        pretrain_plan.make_plan(job_config.parse(config))


def test_corpus_vectors_match_an_exact_svd_of_a_real_books_ppmi():
    # The randomized SVD must give the top singular directions of a real PPMI matrix (whose spectrum falls slowly,
    # so too few power steps mix in the next directions): the table's Gram matrix, applied to a few probes, equals
    # the one from ARPACK's exact truncated SVD (scipy's svds) of the same matrix to 10% (3 power steps: 39%).
    import glob
    import os

    import scipy.sparse.linalg

    import bert_jax

    book = sorted(glob.glob(os.path.join(os.path.dirname(bert_jax.__file__), "assets", "corpus", "*.txt")))[0]
    with open(book, encoding="utf-8") as f:
        words = f.read()[:300_000].lower().split()
    vocab = {word: i + 1 for i, word in enumerate(sorted(set(words)))}  # 0: a special id nothing uses
    tokens = np.array([vocab[word] for word in words], np.int32)
    batches = [(tokens, np.array([len(tokens)]))]
    dim = 128
    table, seen = structured_init.cooccurrence_embeddings(batches, len(vocab) + 1, dim, [0], window=2, std=0.02)

    ppmi = structured_init.positive_pmi(batches, len(vocab) + 1, [0], window=2)
    ids = np.flatnonzero(seen)
    u, s, _ = scipy.sparse.linalg.svds(ppmi[ids][:, ids], k=dim)
    exact = u * np.sqrt(s)
    exact *= 0.02 / exact.std()
    ours = table[ids]
    probes = np.random.default_rng(1).standard_normal((len(ids), 8))
    expected = exact @ (exact.T @ probes)
    error = np.linalg.norm(ours @ (ours.T @ probes) - expected) / np.linalg.norm(expected)
    assert error < 0.1, error
