"""Reading text into documents: the four formats, sentence splitting, and every kind of bad input."""

from __future__ import annotations

import logging

import pytest

from bert_jax.data.documents import (
    CorpusError,
    ReadStats,
    expand_input_files,
    iter_documents,
    iter_file_documents,
    sniff_format,
    split_sentences,
)
from tests.conftest import shared_path


def test_split_sentences_hand_worked():
    text = (
        'Mr. Holmes looked up. "Is it so?" he asked!  Dr. Watson nodded. J. R. R. Tolkien wrote 3 books.\n'
        "It was 5 p.m. when they left. The end"
    )
    assert split_sentences(text) == [
        "Mr. Holmes looked up.",
        '"Is it so?" he asked!',
        "Dr. Watson nodded.",
        "J. R. R. Tolkien wrote 3 books.",
        "It was 5 p.m. when they left.",
        "The end",
    ]
    assert split_sentences("“Come here,” said Alice. “Now!” She ran.") == [
        "“Come here,” said Alice.",
        "“Now!”",
        "She ran.",
    ]
    assert split_sentences("   ") == []


def test_original_sentence_per_line_format(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc one.\nFirst doc two.\n\n\nSecond doc only.\n")
    stats = ReadStats()
    docs = list(iter_documents([str(path)], "sentences", stats))
    assert docs == [["First doc one.", "First doc two."], ["Second doc only."]]
    assert (stats.documents, stats.sentences) == (2, 3)


def test_the_shared_bert_sample_is_read_as_the_original_does():
    # google-research/bert's sample_text.txt: 3 documents, one sentence per line (33 lines, 2 blank).
    path = shared_path("bert_sample", "sample_text.txt")
    stats = ReadStats()
    docs = list(iter_documents([str(path)], "auto", stats))
    assert stats.formats[str(path)] == "sentences"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(docs) == 3
    assert sum(len(d) for d in docs) == sum(1 for ln in lines if ln.strip())


def test_prose_books_are_one_document_split_into_sentences():
    path = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    stats = ReadStats()
    docs = list(iter_documents([str(path)], "auto", stats))
    assert stats.formats[str(path)] == "prose" and len(docs) == 1
    sentences = docs[0]
    assert len(sentences) > 1000
    # Hard wrapping is undone: no sentence contains a newline, and most end with terminal punctuation.
    assert all("\n" not in s for s in sentences)
    ends = sum(1 for s in sentences if s.rstrip("”’\"')_").endswith((".", "!", "?")))
    assert ends / len(sentences) > 0.8
    assert "Alice was beginning to get very tired of sitting by her sister on the bank," in " ".join(sentences)


def test_wikitext_articles_become_documents():
    path = shared_path("wikitext2", "wiki.valid.tokens")
    head = path.read_text(encoding="utf-8")
    articles = sum(1 for ln in head.splitlines() if ln.startswith(" = ") and not ln.startswith(" = = "))
    stats = ReadStats()
    docs = list(iter_documents([str(path)], "auto", stats))
    assert stats.formats[str(path)] == "wikitext"
    assert len(docs) == articles  # one document per top-level " = Title = " line
    assert not any(s.startswith("= ") for d in docs for s in d)  # headings are not sentences


def test_one_document_per_line(tmp_path):
    path = tmp_path / "docs.txt"
    long_doc = " ".join(f"Sentence number {i} is here." for i in range(40))
    path.write_text(long_doc + "\n" + long_doc.replace("number", "no") + "\n")
    assert sniff_format(path.read_text()) == "documents"
    docs = list(iter_documents([str(path)]))
    assert len(docs) == 2 and len(docs[0]) == 40 and docs[0][0] == "Sentence number 0 is here."


def test_non_utf8_bytes_are_replaced_counted_and_warned_once(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\xe9 au lait.\nNa\xefve text here.\n".encode("latin-1"))
    stats = ReadStats()
    with caplog.at_level(logging.WARNING):
        docs = list(iter_documents([str(path)], "sentences", stats))
    assert docs == [["Caf\ufffd au lait.", "Na\ufffdve text here."]]
    assert stats.replaced_characters == 2
    warnings = [r for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warnings) == 1 and "2 undecodable" in warnings[0].getMessage()


def test_binary_and_empty_files_are_skipped_with_a_warning(tmp_path, caplog):
    good = tmp_path / "good.txt"
    good.write_text("A real sentence.\n")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 40)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    stats = ReadStats()
    with caplog.at_level(logging.WARNING):
        docs = list(iter_documents([str(binary), str(empty), str(good)], "auto", stats))
    assert docs == [["A real sentence."]]
    assert stats.skipped_files == [(str(binary), "binary"), (str(empty), "empty")]
    assert any("looks binary" in r.getMessage() for r in caplog.records)


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CorpusError, match=r"corpus is empty.*empty\.txt \(empty\)"):
        list(iter_documents([str(empty)]))


def test_single_sentence_document_and_mixed_line_endings(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"One.\r\nTwo.\rThree.\n\r\nLonely sentence.\r\n")
    docs = list(iter_documents([str(path)], "sentences"))
    assert docs == [["One.", "Two.", "Three."], ["Lonely sentence."]]


def test_megabyte_lines_stream(tmp_path):
    path = tmp_path / "huge.txt"
    sentence = "This is a rather long sentence that repeats. "
    line = sentence * (1_000_000 // len(sentence))
    path.write_text(line + "\n" + line + "\n")
    docs = list(iter_documents([str(path)], "documents"))
    assert len(docs) == 2 and len(docs[0]) == 1_000_000 // len(sentence)


def test_input_file_specs(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text("x.\n")
    assert expand_input_files(str(tmp_path / "*.txt")) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    both = f"{tmp_path / 'c.md'},{tmp_path / '*.txt'}"
    assert expand_input_files(both) == [str(tmp_path / n) for n in ("c.md", "a.txt", "b.txt")]
    with pytest.raises(CorpusError, match="matches no file"):
        expand_input_files(str(tmp_path / "*.csv"))
    with pytest.raises(CorpusError, match="No input files"):
        expand_input_files(" , ")
    with pytest.raises(CorpusError, match="Unknown text format"):
        list(iter_file_documents(str(tmp_path / "a.txt"), "html"))
