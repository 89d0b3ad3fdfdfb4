"""An on-disk, random-access store of tokenized documents (the corpus builder's intermediate form).

NSP needs "a random segment from another document", i.e. random access to the whole tokenized corpus,
which the original got by holding everything in memory. Here the first pass appends each tokenized
document to flat files (token ids, word-start flags, sentence and document offsets); the second pass
memory-maps them, so creating instances needs memory for a few documents, not the corpus.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

TOKENS, STARTS, SENTENCES, DOCUMENTS = "tokens.i32", "word_starts.u8", "sentence_offsets.i64", "document_offsets.i64"
KEYS = "document_keys.i64"


class TokenStoreWriter:
    """Appends tokenized documents to `directory` (created); `close()` writes the offsets."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._tokens = open(os.path.join(self.directory, TOKENS), "wb")
        self._starts = open(os.path.join(self.directory, STARTS), "wb")
        self._sentence_offsets = [0]
        self._document_offsets = [0]
        self._keys: list[int] = []

    @property
    def num_documents(self) -> int:
        return len(self._document_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return self._sentence_offsets[-1]

    def add(self, sentences: Sequence[tuple[Sequence[int], Sequence[bool]]], key: int = -1) -> None:
        """Adds one document (its non-empty sentences; a document with none is dropped) under an integer key."""
        kept = [(ids, starts) for ids, starts in sentences if len(ids)]
        if not kept:
            return
        for ids, starts in kept:
            self._tokens.write(np.asarray(ids, np.int32).tobytes())
            self._starts.write(np.asarray(starts, np.uint8).tobytes())
            self._sentence_offsets.append(self._sentence_offsets[-1] + len(ids))
        self._document_offsets.append(len(self._sentence_offsets) - 1)
        self._keys.append(key)

    def add_flat(self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, key: int = -1) -> None:
        """`add` for a document given as flat arrays: every sentence's ids and word starts concatenated, and the
        sentences' lengths (a worker process's form, `build_workers`). Empty sentences are dropped as in `add`."""
        lengths = np.asarray(lengths, np.int64)
        kept = lengths[lengths > 0]
        if kept.size == 0:
            return
        self._tokens.write(np.asarray(ids, np.int32).tobytes())
        self._starts.write(np.asarray(starts, np.uint8).tobytes())
        self._sentence_offsets.extend((self._sentence_offsets[-1] + np.cumsum(kept)).tolist())
        self._document_offsets.append(len(self._sentence_offsets) - 1)
        self._keys.append(key)

    def close(self) -> None:
        self._tokens.close()
        self._starts.close()
        np.asarray(self._sentence_offsets, np.int64).tofile(os.path.join(self.directory, SENTENCES))
        np.asarray(self._document_offsets, np.int64).tofile(os.path.join(self.directory, DOCUMENTS))
        np.asarray(self._keys, np.int64).tofile(os.path.join(self.directory, KEYS))


class TokenStore:
    """Read side: `store[i]` is document i as a list of (token ids, word starts) numpy arrays."""

    def __init__(self, directory: str | os.PathLike[str]):
        directory = os.fspath(directory)
        self._sentence_offsets = np.fromfile(os.path.join(directory, SENTENCES), np.int64)
        self._document_offsets = np.fromfile(os.path.join(directory, DOCUMENTS), np.int64)
        self.keys = np.fromfile(os.path.join(directory, KEYS), np.int64)
        num_tokens = int(self._sentence_offsets[-1])
        # np.memmap cannot map an empty file; an empty store has nothing to read anyway.
        # (np.asarray drops the memmap subclass, whose per-slice bookkeeping costs more than the copy.)
        if num_tokens:
            self._tokens = np.asarray(np.memmap(os.path.join(directory, TOKENS), np.int32, "r", shape=(num_tokens,)))
            self._starts = np.asarray(np.memmap(os.path.join(directory, STARTS), np.uint8, "r", shape=(num_tokens,)))
        else:
            self._tokens = np.zeros(0, np.int32)
            self._starts = np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._document_offsets) - 1

    def document_token_counts(self) -> np.ndarray:
        """Tokens of every document, in store order."""
        return np.diff(self._sentence_offsets[self._document_offsets])

    def __getitem__(self, index: int) -> DocumentView:
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} out of range (the store has {len(self)})")
        first, last = self._document_offsets[index], self._document_offsets[index + 1]
        return DocumentView(self, self._sentence_offsets[first : last + 1])

    def sentence(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        return self._tokens[start:end], self._starts[start:end].view(bool)


class DocumentView(Sequence[tuple[np.ndarray, np.ndarray]]):
    """One document of a `TokenStore`; sentences are read only when indexed (books have thousands)."""

    def __init__(self, store: TokenStore, bounds: np.ndarray):
        self._store = store
        self._bounds = bounds

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sentence {index} out of range (the document has {len(self)})")
        return self._store.sentence(int(self._bounds[index]), int(self._bounds[index + 1]))
