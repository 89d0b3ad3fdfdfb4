"""Real text -> TFDS corpus -> resumable masked-LM batches: the statistics the original promises, end to end."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bert_jax.data.corpus import CorpusOptions, build_corpus, masking_config_from_corpus, open_corpus
from bert_jax.data.pipeline import PipelineConfig, PretrainingBatches, epoch_permutation
from tests.conftest import shared_path

PAD, CLS, SEP, MASK = 0, 101, 102, 103
GLOBAL_BATCH = 256


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    files = (
        str(shared_path("wikitext2", "wiki.valid.tokens")),
        str(shared_path("gutenberg", "pg84-frankenstein.txt")),
        str(shared_path("gutenberg", "pg1342-pride-and-prejudice.txt")),
    )
    options = CorpusOptions(
        input_files=files, vocab_file=str(shared_path("vocab", "bert-base-uncased-vocab.txt")), max_seq_length=128
    )
    return build_corpus(options, tmp_path_factory.mktemp("corpus"), num_shards=4).dataset_dir


def _pipeline(corpus_dir, num_epochs=1, **kwargs):
    masking = masking_config_from_corpus(corpus_dir, max_predictions_per_seq=20)
    config = PipelineConfig(
        global_batch_size=GLOBAL_BATCH, max_seq_length=128, seed=3, num_epochs=num_epochs, prefetch=2
    )
    return PretrainingBatches(open_corpus(corpus_dir, "train"), config, masking, **kwargs)


def test_masking_and_nsp_statistics_on_real_text(corpus_dir):
    source = open_corpus(corpus_dir, "train")
    orders = [epoch_permutation(len(source), seed=3, epoch=e) for e in range(2)]
    counts = dict(predictions=0, tokens=0, capped=0, mask=0, kept=0, random=0, words=0, split_words=0)
    labels = []
    start = time.perf_counter()
    with _pipeline(corpus_dir, num_epochs=2) as batches:  # two epochs: fresh masks, > 100k predictions
        for step, batch in enumerate(batches):
            epoch, k = divmod(step, batches.batches_per_epoch)
            items = source.__getitems__(orders[epoch][k * GLOBAL_BATCH : (k + 1) * GLOBAL_BATCH].tolist())
            labels.extend(batch["next_sentence_labels"].tolist())
            for row, item in enumerate(items):
                tokens, starts = item["tokens"], item["word_starts"]
                n = len(tokens)
                assert batch["attention_mask"][row].sum() == n <= 128  # A + B within the limit
                np.testing.assert_array_equal(batch["token_type_ids"][row, :n], item["segment_ids"])
                assert int(batch["next_sentence_labels"][row]) == int(item["is_random_next"])
                weights = batch["masked_lm_weights"][row] > 0
                positions = batch["masked_lm_positions"][row][weights]
                assert np.all(np.isin(tokens[positions], (PAD, CLS, SEP), invert=True))  # never a special token
                np.testing.assert_array_equal(batch["masked_lm_ids"][row][weights], tokens[positions])
                target = min(20, max(1, round(n * 0.15)))
                counts["capped"] += target == 20
                counts["predictions"] += len(positions)
                counts["tokens"] += n
                # Whole words: a masked piece's whole word is masked, with one 80/10/10 decision.
                masked = np.zeros(n, bool)
                masked[positions] = True
                # A word starts at a flagged piece, at a special token, and right after one (a segment whose front
                # was truncated may begin with a "##" piece: it is a word of its own).
                special = np.isin(tokens, (CLS, SEP))
                word_id = np.cumsum(starts | special | np.r_[False, special[:-1]])
                ids = batch["input_ids"][row, :n]
                for word in np.unique(word_id[masked]):
                    members = word_id == word
                    counts["words"] += 1
                    counts["split_words"] += not masked[members].all()
                    if np.all(ids[members] == MASK):
                        counts["mask"] += 1
                    elif np.all(ids[members] == tokens[members]):
                        counts["kept"] += 1
                    else:
                        counts["random"] += 1
    elapsed = time.perf_counter() - start
    assert counts["predictions"] >= 100_000
    assert counts["split_words"] == 0
    # Without the cap the original predicts round(0.15 * length); whole words that would overshoot are skipped.
    assert counts["capped"] < 0.05 * len(labels)
    assert abs(counts["predictions"] / counts["tokens"] - 0.15) < 0.005
    words = counts["words"]
    assert abs(counts["mask"] / words - 0.8) < 0.01
    assert abs(counts["kept"] / words - 0.1) < 0.01
    assert abs(counts["random"] / words - 0.1) < 0.01
    # A coin flip per pair: over the corpus's ~4,860 distinct pairs (two epochs repeat them) one standard error is
    # sqrt(0.25 / 4860) = 0.0072; 3 of them bound the rate (this corpus: 0.490).
    assert abs(np.mean(labels) - 0.5) < 3 * np.sqrt(0.25 / len(source))
    print(f"{len(labels)} examples, {counts['predictions']} predictions, {len(labels) / elapsed:.0f} examples/s")


def test_resume_and_process_split_on_the_tfds_source(corpus_dir):
    with _pipeline(corpus_dir) as stream:
        reference = [next(stream) for _ in range(6)]
    with _pipeline(corpus_dir) as first:
        for _ in range(3):
            next(first)
        state = first.state()
    halves = [_pipeline(corpus_dir, process_index=p, process_count=2, start_state=state) for p in (0, 1)]
    try:
        for expected in reference[3:]:
            parts = [next(h) for h in halves]
            for key, value in expected.items():
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)
    finally:
        for h in halves:
            h.close()
