"""Tokenizers: one small interface, BERT's WordPiece (exactly), SentencePiece, Hugging Face tokenizer.json, and
vocabulary training.

Everything downstream (pretraining data, masking, fine-tuning, embedding) sees only `Tokenizer`: `encode`
(ids, no special tokens added), `encode_with_word_starts` (ids plus a flag for each piece that begins a
word, which whole-word masking needs), batch versions, `decode` / `convert_ids_to_tokens`, `vocab_size`,
`vocab` and the ids of the five special tokens [PAD] [UNK] [CLS] [SEP] [MASK].

WordPiece (`WordPieceTokenizer`) gives ids identical to the original BERT tokenizer (transformers' slow
`BertTokenizer`, a port of it): clean control characters, split CJK characters, lowercase and strip
accents (uncased), split punctuation, then greedy longest-match-first WordPiece with "##" continuations
and [UNK] for words over 100 characters. The Rust `tokenizers` library does the heavy lifting, but its
Unicode tables are not Python's, so it differs from the reference on some non-ASCII text (characters
assigned after its tables were made, category changes, and a mistyped CJK range: it skips U+2B820 to
U+2B91F). Hence two paths, chosen per piece of text:

  * printable ASCII (plus tab, newline, carriage return): the library's own BERT pipeline
    (`BertNormalizer` + `BertPreTokenizer` + `WordPiece`), where both implementations provably agree (the
    tests try every ASCII character in context);
  * anything else: the basic tokenization runs in Python with `unicodedata`, exactly as the reference
    does it, and the library only applies WordPiece to the resulting words.

Literal special-token strings in the text ("[MASK]", "[SEP]", ...) become their ids, as in the reference.

SentencePiece (`SentencePieceTokenizer`) wraps a `sentencepiece` model; see its docstring for how the
special tokens map onto the model's pieces.

A Hugging Face tokenizer.json (`HuggingFaceTokenizer`: ModernBERT's byte-level BPE, GPT-2/RoBERTa-style BPEs,
WordPiece, Unigram; whatever the `tokenizers` library loads) runs through the library's public API; see its
docstring for the special tokens ([CLS] or <s>, ...) and for the word starts of whole-word masking.

`load_tokenizer(vocab_file=..., spm_model=..., tokenizer_file=...)` picks the kind (exactly one is given).

`train_wordpiece` / `train_sentencepiece` build a new vocabulary from text files, special tokens first;
`tools/train_vocab.py` (bert-jax-train-vocab) is their command line.
"""

from __future__ import annotations

import abc
import io
import json
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import sentencepiece
from tokenizers import Encoding, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as FastTokenizer

from bert_jax import storage

PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"
# The order in which trained vocabularies list them (ids 0..4).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
# Words longer than this many characters become [UNK] (the original's max_input_chars_per_word).
MAX_INPUT_CHARS_PER_WORD = 100
# The SentencePiece word-boundary marker (U+2581): a piece that starts with it begins a word.
SPM_WORD_MARKER = "\u2581"

PathLike = str | os.PathLike[str]

_SPM_AS_VOCAB = "{path} is a SentencePiece model, not a WordPiece vocab.txt: pass it as spm_model (--spm_model)."
_FIX_VOCAB = (
    "Put them in the vocab file, one per line (usually [PAD] [UNK] [CLS] [SEP] [MASK] at the top), or train a "
    "vocab with bert-jax-train-vocab, which writes them first."
)


class TokenizerError(ValueError):
    """A vocabulary or model that cannot be used, or a bad argument; the message says what and how to fix it."""


class Tokenizer(abc.ABC):
    """What the rest of bert_jax needs from a tokenizer.

    Ids never include special tokens unless the text spells one out; callers add [CLS]/[SEP] themselves
    (the pretraining and fine-tuning code knows where they go).
    """

    @property
    @abc.abstractmethod
    def vocab(self) -> Mapping[str, int]:
        """Token string -> id, read-only."""

    @property
    def vocab_size(self) -> int:
        """The number of ids (the model's embedding rows)."""
        return len(self.vocab)

    @property
    @abc.abstractmethod
    def special_ids(self) -> Mapping[str, int]:
        """Special token string ([PAD] [UNK] [CLS] [SEP] [MASK]) -> its id."""

    @property
    def pad_id(self) -> int:
        """Id of [PAD]."""
        return self.special_ids[PAD]

    @property
    def unk_id(self) -> int:
        """Id of [UNK]."""
        return self.special_ids[UNK]

    @property
    def cls_id(self) -> int:
        """Id of [CLS]."""
        return self.special_ids[CLS]

    @property
    def sep_id(self) -> int:
        """Id of [SEP]."""
        return self.special_ids[SEP]

    @property
    def mask_id(self) -> int:
        """Id of [MASK]."""
        return self.special_ids[MASK]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self.encode_batch([text])[0]

    def encode_with_word_starts(self, text: str) -> tuple[list[int], list[bool]]:
        """Token ids of `text` and, for each, whether it begins a word (False for a continuation piece)."""
        return self.encode_batch_with_word_starts([text])[0]

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once (in parallel where the backend can)."""

    @abc.abstractmethod
    def encode_batch_with_word_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
        """`encode_with_word_starts` for many texts at once."""

    @abc.abstractmethod
    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """The token string of each id."""

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """The id of each token string; tokens not in the vocabulary give the [UNK] id."""
        vocab, unk = self.vocab, self.unk_id
        return [vocab.get(token, unk) for token in tokens]

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Readable text for `ids` (lossy: case, accents and spacing around punctuation may differ)."""

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` as a list, after checking each is a valid id (a negative index would silently wrap)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}).")
        return ids


# ----------------------------------------------------------------------------------------------------------
# Basic tokenization in Python: the reference's rules, character class by character class.
# ----------------------------------------------------------------------------------------------------------

# The code point blocks the original treats as CJK ideographs (each becomes a word of its own).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_TAB_NEWLINE_RETURN = "\t\n\r"
# ASCII control characters that the cleaning step deletes; their presence sends text down the Python path.
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPECIAL_PATTERN = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def is_cjk(cp: int) -> bool:
    """A CJK ideograph by the original's block list (not every Han or CJK character: kana and hangul are not)."""
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def is_control(char: str) -> bool:
    """Deleted by cleaning: NUL, U+FFFD and every Unicode "other" (C*) character except tab, newline, return."""
    if char in _TAB_NEWLINE_RETURN:
        return False
    return char in "\x00\ufffd" or unicodedata.category(char).startswith("C")


def is_whitespace(char: str) -> bool:
    """Mapped to a space by cleaning: space, tab, newline, return and the space separators (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_punctuation(char: str) -> bool:
    """Split off as a word of its own: every non-alphanumeric printable ASCII character, and Unicode P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# Planes 0-3 (where assigned characters live) are cached; the rest (unassigned, tags, private use) is rare
# enough to recompute, which bounds the tables' size however many distinct characters come by.
_CACHED_CODE_POINTS = 0x40000


class _CharTable(dict):
    """A `str.translate` table computed lazily per code point and cached (a full one would have 1.1M entries).

    `rule(char)` returns None (delete), a replacement string, or the char itself.
    """

    def __init__(self, rule) -> None:
        super().__init__()
        self._rule = rule

    def __missing__(self, cp: int) -> str | None:
        value = self._rule(chr(cp))
        if cp < _CACHED_CODE_POINTS:
            self[cp] = value
        return value


def _clean_rule(char: str) -> str | None:
    """Cleaning and CJK splitting (one pass: they act on disjoint characters)."""
    if is_control(char):
        return None
    if is_whitespace(char):
        return " "
    return f" {char} " if is_cjk(ord(char)) else char


def _split_rule(char: str) -> str | None:
    """Punctuation splitting; any remaining whitespace (line/paragraph separators) becomes a plain space."""
    if is_punctuation(char):
        return f" {char} "
    return " " if char.isspace() else char


def _strip_and_split_rule(char: str) -> str | None:
    """Accent stripping (delete nonspacing marks, Mn, after NFD) and punctuation splitting."""
    return None if unicodedata.category(char) == "Mn" else _split_rule(char)


_CLEAN = _CharTable(_clean_rule)
_SPLIT = _CharTable(_split_rule)
_STRIP_AND_SPLIT = _CharTable(_strip_and_split_rule)


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """The original BERT basic tokenization of `text`: the words that WordPiece then splits into pieces.

    Same steps and order as the reference: (uncased) lowercase each character; delete control characters
    and map whitespace to spaces; put spaces around CJK ideographs; NFC; (uncased) lowercase, NFD and drop
    nonspacing marks; split off punctuation; split on whitespace. Lowercasing character by character means a
    final capital sigma becomes a plain sigma (U+03C3), not the final form (U+03C2). Cased, a
    whitespace-separated special token ("[MASK]") is kept whole, as the reference's never_split does.
    Special-token strings are not otherwise treated here (`WordPieceTokenizer` cuts them out first).
    """
    if lowercase:
        text = text.replace("\u03a3", "\u03c3").lower()  # Σ is str.lower's only context-dependent case
    text = unicodedata.normalize("NFC", text.translate(_CLEAN))
    if lowercase:
        return unicodedata.normalize("NFD", text.lower()).translate(_STRIP_AND_SPLIT).split()
    if _SPECIAL_PATTERN.search(text) is None:
        return text.translate(_SPLIT).split()
    words: list[str] = []
    for word in text.split():
        words.extend([word] if word in SPECIAL_TOKENS else word.translate(_SPLIT).split())
    return words


def _word_starts(word_ids: Sequence[int | None]) -> list[bool]:
    """True where a piece belongs to a different word than the piece before it."""
    return [i == 0 or word_ids[i] != word_ids[i - 1] for i in range(len(word_ids))]


# ----------------------------------------------------------------------------------------------------------
# WordPiece vocab files.
# ----------------------------------------------------------------------------------------------------------


def _read_bytes(path: PathLike, what: str) -> bytes:
    """The file's bytes, or a TokenizerError saying it is missing / a directory."""
    path = pathlib.Path(path)
    if not path.exists():
        raise TokenizerError(f"{what} not found: {path}")
    if not path.is_file():
        raise TokenizerError(f"{what} is not a file: {path}")
    return path.read_bytes()


def _looks_like_sentencepiece(data: bytes) -> bool:
    """Whether `data` parses as a serialized SentencePiece model."""
    try:
        sentencepiece.SentencePieceProcessor(model_proto=data)
    except Exception:
        return False
    return True


def _decode_vocab_text(data: bytes, path: PathLike) -> str:
    """The vocab file as text, rejecting binaries (SentencePiece models above all) and non-UTF-8 files."""
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is not part of the first token
    except UnicodeDecodeError as e:
        if _looks_like_sentencepiece(data):
            raise TokenizerError(_SPM_AS_VOCAB.format(path=path)) from None
        raise TokenizerError(
            f"{path} is not UTF-8 (byte {e.start}: {data[e.start : e.start + 4]!r}); vocab files are UTF-8 text, "
            "one token per line. Re-encode it (e.g. iconv -t UTF-8)."
        ) from None
    if "\x00" in text:
        if _looks_like_sentencepiece(data):
            raise TokenizerError(_SPM_AS_VOCAB.format(path=path))
        raise TokenizerError(
            f"{path} is a binary file (it contains NUL bytes), not a vocab.txt with one token per line."
        )
    return text


def _reject_json(text: str, path: PathLike) -> None:
    """A JSON document (tokenizer.json, vocab.json) passed where a vocab.txt belongs."""
    if text.lstrip()[:1] not in ("{", "["):
        return
    try:
        json.loads(text)
    except ValueError:
        return
    raise TokenizerError(
        f"{path} is a JSON file, not a WordPiece vocab.txt (one token per line). A Hugging Face tokenizer.json "
        "goes in tokenizer_file (--tokenizer_file) instead."
    )


def _vocab_lines(text: str, path: PathLike) -> list[str]:
    """One token per line ("\\r\\n" accepted); blank lines and tokens with spaces or tabs are errors.

    A token with a space or tab can never be produced (words are split there) and is the mark of a
    "token<TAB>score" or "token count" file rather than a vocab.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.removesuffix("\r") for line in lines]
    for number, token in enumerate(tokens, start=1):
        if not token:
            raise TokenizerError(f"{path} line {number} is blank; a vocab.txt has one non-empty token per line.")
        if " " in token or "\t" in token:
            hint = " (a SentencePiece .vocab? pass the .model as spm_model)" if "\t" in token else ""
            raise TokenizerError(
                f"{path} line {number} ({token!r}) contains whitespace, which no WordPiece token can{hint}."
            )
    return tokens


def _check_duplicates(tokens: Sequence[str], path: PathLike) -> None:
    """Every token once: a repeated one would leave an id that can never be produced."""
    first_line: dict[str, int] = {}
    repeats: list[str] = []
    for number, token in enumerate(tokens, start=1):
        if token in first_line:
            repeats.append(f"{token!r} (lines {first_line[token]} and {number})")
        else:
            first_line[token] = number
    if repeats:
        raise TokenizerError(
            f"{path} lists {len(repeats)} token(s) more than once: {', '.join(repeats[:5])}. "
            "Is this a word-count list rather than a vocab? Each token must appear once."
        )


def load_vocab(vocab_file: PathLike) -> dict[str, int]:
    """A WordPiece vocab.txt as token -> id (the 0-based line number), validated.

    Rejects, each with its own message: a missing file, an empty file, a binary (e.g. a SentencePiece
    .model), a non-UTF-8 file, a JSON file, blank lines or tokens with whitespace, repeated tokens and a
    vocab lacking any of [PAD] [UNK] [CLS] [SEP] [MASK].
    """
    data = _read_bytes(vocab_file, "vocab file")
    text = _decode_vocab_text(data, vocab_file)
    if not text.strip():
        raise TokenizerError(f"{vocab_file} is empty; a vocab.txt has one token per line. {_FIX_VOCAB}")
    _reject_json(text, vocab_file)
    tokens = _vocab_lines(text, vocab_file)
    _check_duplicates(tokens, vocab_file)
    vocab = {token: i for i, token in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"vocab {vocab_file} lacks the special token(s) {' '.join(missing)}. {_FIX_VOCAB}")
    return vocab


# ----------------------------------------------------------------------------------------------------------
# WordPiece.
# ----------------------------------------------------------------------------------------------------------

Segment = str | int  # a piece of text to tokenize, or the id of a special token spelled out in the text


class WordPieceTokenizer(Tokenizer):
    """BERT's WordPiece tokenizer over a vocab.txt, with ids identical to the original's.

    `lowercase=True` is the uncased model's tokenization (lowercase and strip accents); False keeps case
    and accents (NFC-normalized), as for cased vocabs. See the module docstring for how exactness is kept.
    """

    def __init__(self, vocab_file: PathLike, lowercase: bool = True) -> None:
        self.vocab_file = pathlib.Path(vocab_file)
        self.lowercase = bool(lowercase)
        self._vocab = load_vocab(vocab_file)
        self._tokens = list(self._vocab)
        self._special_ids = {t: self._vocab[t] for t in SPECIAL_TOKENS}
        self._bert_pipeline = self._build_bert_pipeline()
        self._words_only = self._build_wordpiece()

    def __repr__(self) -> str:
        return f"WordPieceTokenizer({str(self.vocab_file)!r}, lowercase={self.lowercase})"

    def _build_wordpiece(self) -> FastTokenizer:
        """The `tokenizers` WordPiece model alone: applied to words that are already basic-tokenized."""
        model = models.WordPiece(
            self._vocab,
            unk_token=UNK,
            max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            continuing_subword_prefix="##",
        )
        return FastTokenizer(model)

    def _build_bert_pipeline(self) -> FastTokenizer:
        """The `tokenizers` BERT pipeline (normalizer, pre-tokenizer, WordPiece), exact on printable ASCII."""
        tokenizer = self._build_wordpiece()
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.lowercase, lowercase=self.lowercase
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tokenizer

    @property
    def vocab(self) -> Mapping[str, int]:
        return MappingProxyType(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def special_ids(self) -> Mapping[str, int]:
        return MappingProxyType(self._special_ids)

    def basic_tokenize(self, text: str) -> list[str]:
        """The words of `text` before WordPiece (see `basic_tokenize`), with this tokenizer's casing."""
        return basic_tokenize(text, self.lowercase)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [ids for ids, _ in self._encode_all(texts, with_word_starts=False)]

    def encode_batch_with_word_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
        return self._encode_all(texts, with_word_starts=True)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self._tokens[i] for i in self._checked_ids(ids)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The pieces joined back into words ("##" continuations glued on), words separated by spaces."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self._special_ids]
        return " ".join(tokens).replace(" ##", "").strip()

    # -- encoding --------------------------------------------------------------------------------------

    def _encode_all(self, texts: Sequence[str], with_word_starts: bool) -> list[tuple[list[int], list[bool]]]:
        """Splits each text at special-token strings, encodes all text segments in two batches, reassembles."""
        if isinstance(texts, str):
            raise TokenizerError("encode_batch takes a sequence of texts, not one string; use encode for one text.")
        plans = [_split_specials(text, self._special_ids) for text in texts]
        segments = [s for plan in plans for s in plan if isinstance(s, str)]
        encoded = iter(self._encode_segments(segments, with_word_starts))
        results = []
        for plan in plans:
            ids: list[int] = []
            starts: list[bool] = []
            for segment in plan:
                if isinstance(segment, int):
                    ids.append(segment)
                    starts.append(True)
                else:
                    segment_ids, segment_starts = next(encoded)
                    ids += segment_ids
                    starts += segment_starts
            results.append((ids, starts if with_word_starts else []))
        return results

    def _encode_segments(self, segments: list[str], with_word_starts: bool) -> list[tuple[list[int], list[bool]]]:
        """Printable-ASCII segments through the library's BERT pipeline, the rest through Python basic tokenization."""
        on_ascii: list[int] = []
        on_python: list[int] = []
        for i, segment in enumerate(segments):
            (on_ascii if _is_plain_ascii(segment) else on_python).append(i)
        out: list[tuple[list[int], list[bool]]] = [([], [])] * len(segments)
        ascii_encodings = _run_batch(self._bert_pipeline, [segments[i] for i in on_ascii], with_word_starts)
        words = [basic_tokenize(segments[i], self.lowercase) for i in on_python]
        python_encodings = _run_batch(self._words_only, words, with_word_starts)
        for i, encoding in zip(on_ascii + on_python, ascii_encodings + python_encodings, strict=True):
            out[i] = (encoding.ids, _word_starts(encoding.word_ids) if with_word_starts else [])
        return out


def _is_plain_ascii(text: str) -> bool:
    """Printable ASCII plus tab/newline/return: where the library's BERT pipeline equals the reference."""
    return text.isascii() and _ASCII_CONTROL.search(text) is None


def _split_specials(text: str, special_ids: Mapping[str, int]) -> list[Segment]:
    """`text` cut at literal special tokens ("a[MASK]b" -> ["a", 103, "b"]), as the reference does first."""
    if "[" not in text:
        return [text]
    segments: list[Segment] = []
    position = 0
    for match in _SPECIAL_PATTERN.finditer(text):
        if match.start() > position:
            segments.append(text[position : match.start()])
        segments.append(special_ids[match.group()])
        position = match.end()
    if position < len(text):
        segments.append(text[position:])
    return segments


def _run_batch(tokenizer: FastTokenizer, inputs: list, with_word_starts: bool) -> list[Encoding]:
    """`tokenizer` over raw texts (str) or basic-tokenized words (list[str]), no special tokens added.

    Word ids are only computed by the slower `encode_batch`; `encode_batch_fast` skips offsets and words.
    """
    if not inputs:
        return []
    pretokenized = isinstance(inputs[0], list)
    if with_word_starts:
        return tokenizer.encode_batch(inputs, is_pretokenized=pretokenized, add_special_tokens=False)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # encode_batch_fast: tokenizers>=0.20.1
    return encode(inputs, is_pretokenized=pretokenized, add_special_tokens=False)


# ----------------------------------------------------------------------------------------------------------
# SentencePiece.
# ----------------------------------------------------------------------------------------------------------


class SentencePieceTokenizer(Tokenizer):
    """A `sentencepiece` model (.model file) behind the `Tokenizer` interface.

    Special tokens map onto the model's pieces like this:
      * [UNK] is the model's unknown piece (`unk_id()`, always defined; whatever its name), since that is the
        id `encode` produces for unknown text.
      * [PAD] is a piece named "[PAD]" if the model has one, else the model's pad piece (`pad_id()`, when
        trained with pad_id >= 0).
      * [CLS], [SEP], [MASK] are pieces with exactly those names: control symbols (never produced from text;
        what `train_sentencepiece` writes) or user-defined symbols (also matched when the text spells them).
    A model lacking any of them is rejected; `train_sentencepiece` makes models that have all five
    ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4).

    Word starts: a piece begins a word when it starts with "▁" (U+2581, SentencePiece's space marker), and
    the first piece always does. Casing and normalization are part of the model (its normalization rule),
    so there is no `lowercase` switch here.
    """

    def __init__(self, model_file: PathLike) -> None:
        self.model_file = pathlib.Path(model_file)
        data = _read_bytes(model_file, "SentencePiece model")
        self._processor = _load_processor(data, model_file)
        self._tokens = [self._processor.id_to_piece(i) for i in range(self._processor.get_piece_size())]
        self._vocab = {token: i for i, token in enumerate(self._tokens)}
        self._special_ids = _spm_special_ids(self._processor, model_file)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.model_file)!r})"

    @property
    def processor(self) -> sentencepiece.SentencePieceProcessor:
        """The underlying `sentencepiece.SentencePieceProcessor`."""
        return self._processor

    @property
    def vocab(self) -> Mapping[str, int]:
        return MappingProxyType(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def special_ids(self) -> Mapping[str, int]:
        return MappingProxyType(self._special_ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TokenizerError("encode_batch takes a sequence of texts, not one string; use encode for one text.")
        return self._processor.encode(list(texts), out_type=int)

    def encode_batch_with_word_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
        return [(ids, self._word_starts(ids)) for ids in self.encode_batch(texts)]

    def _word_starts(self, ids: Sequence[int]) -> list[bool]:
        """True for the first piece and for every piece that starts with the space marker."""
        return [k == 0 or self._tokens[i].startswith(SPM_WORD_MARKER) for k, i in enumerate(ids)]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self._tokens[i] for i in self._checked_ids(ids)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self._processor.piece_to_id(token) for token in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """SentencePiece's own detokenization (control symbols such as [CLS] decode to nothing)."""
        return self._processor.decode(self._checked_ids(ids))


def _load_processor(data: bytes, model_file: PathLike) -> sentencepiece.SentencePieceProcessor:
    """Parses a serialized model, explaining the usual mistake (a vocab.txt passed as the model)."""
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=data)
    except Exception as e:
        hint = ""
        if b"\x00" not in data[:4096] and (data.startswith(b"[PAD]") or b"\n[CLS]\n" in data):
            hint = " It looks like a WordPiece vocab.txt: pass it as vocab_file instead."
        raise TokenizerError(f"{model_file} is not a SentencePiece model ({e}).{hint}") from None


def _spm_special_ids(processor: sentencepiece.SentencePieceProcessor, model_file: PathLike) -> dict[str, int]:
    """Ids of the five special tokens in a SentencePiece model (mapping in `SentencePieceTokenizer`)."""

    def piece_id(piece: str) -> int | None:
        i = processor.piece_to_id(piece)
        return i if processor.id_to_piece(i) == piece else None

    pad = piece_id(PAD)
    if pad is None and processor.pad_id() >= 0:
        pad = processor.pad_id()
    ids = {PAD: pad, UNK: processor.unk_id(), CLS: piece_id(CLS), SEP: piece_id(SEP), MASK: piece_id(MASK)}
    missing = [token for token, i in ids.items() if i is None]
    if not missing:
        return {token: i for token, i in ids.items() if i is not None}
    raise TokenizerError(
        f"SentencePiece model {model_file} lacks the special token(s) {' '.join(missing)}. Train it with "
        "bert-jax-train-vocab --model_type=sentencepiece (or bert_jax.tokenizers.train_sentencepiece), or pass "
        "SentencePieceTrainer control_symbols=[CLS],[SEP],[MASK] and pad_id=0, pad_piece=[PAD]."
    )


# ----------------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json.
# ----------------------------------------------------------------------------------------------------------

# The names a tokenizer.json may give each special token, BERT's first: ModernBERT's uses BERT's own strings,
# RoBERTa-style byte-level BPEs the angle-bracket ones.
HF_SPECIAL_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        PAD: (PAD, "<pad>"),
        UNK: (UNK, "<unk>"),
        CLS: (CLS, "<s>"),
        SEP: (SEP, "</s>"),
        MASK: (MASK, "<mask>"),
    }
)


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (any model the `tokenizers` library loads: byte-level BPE as in
    ModernBERT or GPT-2, WordPiece, Unigram, WordLevel) behind the `Tokenizer` interface.

    The file's whole pipeline applies (normalizer, pre-tokenizer, model), through the library's public API
    (`tokenizers.Tokenizer.from_str`, `encode_batch(..., add_special_tokens=False)`), so ids are the library's
    `Tokenizer.encode(text, add_special_tokens=False).ids`. Not applied:
      * the post-processor's special tokens: `encode` gives the bare tokens, as every `Tokenizer` here does (the
        pretraining and fine-tuning code put [CLS]/[SEP] where they belong, by id);
      * any truncation or padding the file configures (a corpus must never be cut silently): both are switched off.
    There is no `lowercase` switch: the file's normalizer decides casing and accents (an uncased model's lowercases),
    and no lowercasing of ours is added; the `lowercase` of `load_tokenizer` and of the configs is ignored for it.

    Special tokens are looked up by name in the vocabulary, added tokens included (`HF_SPECIAL_NAMES`): [PAD] or
    <pad>, [UNK] or <unk>, [CLS] or <s>, [SEP] or </s>, [MASK] or <mask>, BERT's name first. [UNK] falls back to
    the model's own unknown token (`unk_token` / `unk_id` in the file) under another name. A file lacking any of
    them is rejected with one line naming the missing ones.

    `vocab_size` is the full id space, added tokens included (`get_vocab_size(with_added_tokens=True)`; larger
    only if some id lies beyond that count), which is the model's embedding rows.

    Word starts (for whole-word masking). A piece begins a word when
      * it is the first piece, or the pre-tokenizer put it in another word than the piece before (the
        encoding's `word_ids`), or
      * its character offsets put it at a word boundary of the text: it shares no character with the pieces
        before it and begins at whitespace (a "Ġ" or "▁" piece holds its word's space), or right after
        whitespace that no piece holds (pre-tokenizers that drop the spaces). Whitespace is `is_whitespace`'s
        (space, tab, newline, return, Unicode space separators), not the control characters normalizers delete.
    Word ids are the library's model-independent notion of a word, the pieces the pre-tokenizer splits the text
    into before the model runs: BERT's pre-tokenizer gives BERT's words (punctuation apart), so a WordPiece
    tokenizer.json flags exactly what `WordPieceTokenizer` does; the byte-level pre-tokenizer gives GPT-2's words
    (" cat", ".", "'s", " 2019"), so every "Ġ"-prefixed piece starts a word and the pieces after it in the same
    word do not; Metaspace gives SentencePiece's "▁" words. The offset rule covers a file without a pre-tokenizer
    (whose text is a single "word") and never splits a word a pre-tokenizer made: a piece inside a word neither
    begins at whitespace nor follows a space that no piece holds (after a lone "Ġ" piece, "Ã" of " é" continues
    the word). Byte-level pieces holding parts of one multi-byte character share it, so masking never splits
    them. A special token spelled out in the text is a word of its own. (Offsets index the original text, so a
    normalizer does not change the rule; a WordPiece file's flags equal `WordPieceTokenizer`'s, tested.)
    """

    def __init__(self, tokenizer_file: PathLike) -> None:
        self.tokenizer_file = pathlib.Path(tokenizer_file)
        data = _read_bytes(tokenizer_file, "tokenizer.json")
        self._tokenizer = _load_tokenizer_json(data, tokenizer_file)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        if not self._vocab:
            raise TokenizerError(f"{tokenizer_file} has an empty vocabulary.")
        self._vocab_size = max(self._tokenizer.get_vocab_size(with_added_tokens=True), max(self._vocab.values()) + 1)
        self._tokens: list[str | None] = [None] * self._vocab_size
        for token, i in self._vocab.items():
            self._tokens[i] = token
        self._special_ids = _hf_special_ids(self._vocab, data, tokenizer_file)

    def __repr__(self) -> str:
        return f"HuggingFaceTokenizer({str(self.tokenizer_file)!r})"

    @property
    def tokenizer(self) -> FastTokenizer:
        """The underlying `tokenizers.Tokenizer` (truncation and padding off)."""
        return self._tokenizer

    @property
    def vocab(self) -> Mapping[str, int]:
        return MappingProxyType(self._vocab)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_ids(self) -> Mapping[str, int]:
        return MappingProxyType(self._special_ids)

    @property
    def special_tokens(self) -> dict[str, str]:
        """The file's own string for each special token ([CLS] -> "<s>" in a RoBERTa-style file)."""
        return {role: self._tokens[i] or role for role, i in self._special_ids.items()}

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = self._texts(texts)
        return [encoding.ids for encoding in _run_batch(self._tokenizer, texts, with_word_starts=False)]

    def encode_batch_with_word_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
        texts = self._texts(texts)
        encodings = _run_batch(self._tokenizer, texts, with_word_starts=True)
        return [
            (e.ids, _offset_word_starts(text, e.word_ids, e.offsets)) for text, e in zip(texts, encodings, strict=True)
        ]

    @staticmethod
    def _texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TokenizerError("encode_batch takes a sequence of texts, not one string; use encode for one text.")
        return list(texts)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        tokens = []
        for i in self._checked_ids(ids):
            token = self._tokens[i]
            if token is None:
                raise TokenizerError(f"id {i} has no token in {self.tokenizer_file} (a gap in its ids).")
            tokens.append(token)
        return tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The file's own decoder (byte-level BPE gives back the text's spaces; WordPiece glues "##" pieces)."""
        return self._tokenizer.decode(self._checked_ids(ids), skip_special_tokens=skip_special_tokens)


def _offset_word_starts(text: str, word_ids: Sequence[int | None], offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """The word-start flags of one encoding (the rule is in `HuggingFaceTokenizer`'s docstring)."""
    starts: list[bool] = []
    previous_word: int | None = None
    previous_end = 0
    for k, (word, (start, end)) in enumerate(zip(word_ids, offsets, strict=True)):
        begins = k == 0 or word is None or word != previous_word
        if not begins and previous_end <= start < len(text):
            begins = is_whitespace(text[start]) or (start > previous_end and is_whitespace(text[start - 1]))
        starts.append(begins)
        previous_word = word
        previous_end = max(previous_end, end)
    return starts


def _load_tokenizer_json(data: bytes, path: PathLike) -> FastTokenizer:
    """Parses a tokenizer.json, explaining the usual mistakes (a vocab.txt, a SentencePiece model, another JSON)."""
    try:
        return FastTokenizer.from_str(data.decode("utf-8-sig"))
    except Exception as e:
        if _looks_like_sentencepiece(data):
            hint = " It is a SentencePiece model: pass it as spm_model instead."
        elif b"\x00" not in data[:4096] and (data.startswith(b"[PAD]") or b"\n[CLS]\n" in data):
            hint = " It looks like a WordPiece vocab.txt: pass it as vocab_file instead."
        else:
            hint = " Pass the tokenizer.json of a Hugging Face model (tokenizer_config.json and vocab.json are not it)."
        reason = " ".join(str(e).split())[:200]
        raise TokenizerError(f"{path} is not a Hugging Face tokenizer.json ({reason}).{hint}") from None


def _hf_special_ids(vocab: Mapping[str, int], data: bytes, path: PathLike) -> dict[str, int]:
    """Ids of the five special tokens in a tokenizer.json (lookup rules in `HuggingFaceTokenizer`)."""
    ids: dict[str, int] = {}
    for role, names in HF_SPECIAL_NAMES.items():
        found = next((vocab[name] for name in names if name in vocab), None)
        if found is None and role == UNK:
            found = _model_unk_id(data, vocab)
        if found is not None:
            ids[role] = found
    missing = [f"{role} (or {' '.join(HF_SPECIAL_NAMES[role][1:])})" for role in HF_SPECIAL_NAMES if role not in ids]
    if missing:
        raise TokenizerError(
            f"tokenizer.json {path} lacks the special token(s) {', '.join(missing)}: add them "
            "(tokenizers: tok.add_special_tokens([...]); tok.save(path)) or use the tokenizer.json of an encoder "
            "model (ModernBERT's has all five)."
        )
    return ids


def _model_unk_id(data: bytes, vocab: Mapping[str, int]) -> int | None:
    """The model's own unknown token (`unk_token`, or Unigram's `unk_id`), whatever its name."""
    try:
        model = json.loads(data.decode("utf-8-sig")).get("model") or {}
    except ValueError:
        return None
    unk_token = model.get("unk_token")
    if isinstance(unk_token, str) and unk_token in vocab:
        return vocab[unk_token]
    unk_id = model.get("unk_id")
    return unk_id if isinstance(unk_id, int) and unk_id in vocab.values() else None


# ----------------------------------------------------------------------------------------------------------
# The factory.
# ----------------------------------------------------------------------------------------------------------


def load_tokenizer(
    vocab_file: PathLike | None = None,
    spm_model: PathLike | None = None,
    lowercase: bool = True,
    tokenizer_file: PathLike | None = None,
) -> Tokenizer:
    """The tokenizer of exactly one of: `vocab_file` (a WordPiece vocab.txt: `WordPieceTokenizer`), `spm_model` (a
    SentencePiece .model: `SentencePieceTokenizer`) or `tokenizer_file` (a Hugging Face tokenizer.json:
    `HuggingFaceTokenizer`). Each may be local or gs:// (read from this host's verified cached copy).

    `lowercase` applies to WordPiece only; a SentencePiece model and a tokenizer.json carry their own normalization.
    """
    given = {
        name: path
        for name, path in (("vocab_file", vocab_file), ("spm_model", spm_model), ("tokenizer_file", tokenizer_file))
        if path is not None
    }
    if len(given) != 1:
        got = " and ".join(given) or "none"
        raise TokenizerError(
            "pass exactly one of vocab_file (a WordPiece vocab.txt), spm_model (a SentencePiece .model) or "
            f"tokenizer_file (a Hugging Face tokenizer.json); got {got}."
        )
    ((kind, path),) = given.items()
    local = storage.local_copy(os.fspath(path))
    if kind == "vocab_file":
        return WordPieceTokenizer(local, lowercase=lowercase)
    if kind == "spm_model":
        return SentencePieceTokenizer(local)
    return HuggingFaceTokenizer(local)


# ----------------------------------------------------------------------------------------------------------
# Training vocabularies.
# ----------------------------------------------------------------------------------------------------------


def _check_training_args(files: Sequence[PathLike], vocab_size: int, output: PathLike, overwrite: bool) -> None:
    """Shared argument checks: input files exist, a sensible size, no silent overwrite."""
    if not files:
        raise TokenizerError("no input files given.")
    for f in files:
        if not pathlib.Path(f).is_file():
            raise TokenizerError(f"input file not found: {f}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise TokenizerError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}.")
    if pathlib.Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it.")


def _write_atomically(output: PathLike, data: bytes) -> pathlib.Path:
    """Writes `data` to `output` via a temporary file in the same folder, so a crash leaves no half file."""
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")  # plain open: the usual umask permissions
    try:
        tmp.write_bytes(data)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return output


def train_wordpiece(
    files: Sequence[PathLike],
    vocab_size: int,
    output: PathLike,
    lowercase: bool = True,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> pathlib.Path:
    """Trains a WordPiece vocab.txt on text files; returns its path.

    Uses `tokenizers`' WordPieceTrainer behind BERT's normalizer and pre-tokenizer (uncased when
    `lowercase`), so the words it learns from are the words `WordPieceTokenizer` will see. [PAD] [UNK] [CLS]
    [SEP] [MASK] get ids 0-4. A small corpus may yield fewer than `vocab_size` tokens. Refuses to replace
    an existing `output` unless `overwrite`.

    Not bit-reproducible: the library breaks ties between equally frequent merges in hash-map order, so two
    runs on the same text can differ in a few tokens (huggingface/tokenizers issue #1794). Keep the file.
    """
    _check_training_args(files, vocab_size, output, overwrite)
    tokenizer = FastTokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train([os.fspath(f) for f in files], trainer)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise TokenizerError(f"WordPiece training put {tokens[:5]} first, expected {list(SPECIAL_TOKENS)}.")
    return _write_atomically(output, "".join(f"{token}\n" for token in tokens).encode("utf-8"))


def train_sentencepiece(
    files: Sequence[PathLike],
    vocab_size: int,
    output: PathLike,
    lowercase: bool = True,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    overwrite: bool = False,
) -> pathlib.Path:
    """Trains a SentencePiece model on text files and writes it (the serialized .model) to `output`.

    [PAD]=0 and [UNK]=1 are the model's pad and unknown pieces; [CLS]=2 [SEP]=3 [MASK]=4 are control
    symbols (never produced from text, as in ALBERT's models); no BOS/EOS pieces. `lowercase` selects the
    case-folding normalization rule ("nmt_nfkc_cf") instead of "nmt_nfkc". `model_type` is "unigram" or
    "bpe". Refuses to replace an existing `output` unless `overwrite`.
    """
    _check_training_args(files, vocab_size, output, overwrite)
    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}.")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            input=[os.fspath(f) for f in files],
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            pad_piece=PAD,
            unk_piece=UNK,
            control_symbols=[CLS, SEP, MASK],
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    return _write_atomically(output, model.getvalue())
