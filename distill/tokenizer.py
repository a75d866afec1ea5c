"""Byte-level BPE tokenizer for the fedveil language-model students and teachers.

The tokenizer is trained with the ``tokenizers`` library and wrapped in a
``transformers.PreTrainedTokenizerFast`` so models, generation (left padding) and the PII detector
(character offsets) can all use it. Nothing is ever fetched from the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "encode_records",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_fingerprint",
    "tokenizer_from_json",
    "tokenizer_to_json",
    "train_tokenizer",
    "wrap_tokenizer",
]

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
#: Special tokens; their position here is their id (0..3).
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

_N_BYTES = 256
_TOKENIZER_FILE = "tokenizer.json"


def _checked_texts(texts: Iterable[str], counter: list[int]) -> Iterator[str]:
    """Yield ``texts`` unchanged, counting them and rejecting non-strings."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be str, got {type(text).__name__}")
        counter[0] += 1
        yield text


_FEDVEIL_SPECIALS = {"pad": PAD_TOKEN, "bos": BOS_TOKEN, "eos": EOS_TOKEN, "unk": UNK_TOKEN}
_SPECIALS_KEY = "fedveil-specials"


def _wrap(backend: Tokenizer, specials: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """Wrap a backend with its special tokens (fedveil's by default) and fedveil's padding conventions."""
    sp = specials or _FEDVEIL_SPECIALS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=sp["pad"],
        bos_token=sp["bos"],
        eos_token=sp["eos"],
        unk_token=sp["unk"],
        # Generation batches prompts of different lengths; left padding keeps every prompt's last
        # token at the end of the row, where decoding continues.
        padding_side="left",
        # The default clean-up rewrites " ." to "." etc., which would break decode(encode(x)) == x.
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Train it on PUBLIC text only. The tokenizer is shared by every client, the server and the
    released model, and its vocabulary is a list of frequent substrings of the training text: trained
    on private records, a name, account number or e-mail address that recurs in them would become a
    vocabulary entry and leak to everyone who receives the tokenizer, outside any DP accounting.
    Byte-level BPE needs no private text to tokenise private records: any string still encodes, as
    smaller pieces.

    Parameters
    ----------
    texts : iterable of str
        Public training texts (consumed once).
    vocab_size : int
        Upper bound on the vocabulary size, including the 4 special tokens and 256 byte tokens
        (so at least 260).
    min_frequency : int
        Minimum pair count for a BPE merge (>= 1).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        ByteLevel pre-tokenizer (``add_prefix_space=False``) and decoder, offsets trimmed to the text;
        ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` have ids 0, 1, 2, 3; ``padding_side="left"``.
    """
    min_vocab = len(SPECIAL_TOKENS) + _N_BYTES
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be >= {min_vocab} (4 special tokens + 256 bytes), got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    # Trimming drops the leading space that byte-level tokens carry from their offsets, so
    # text[start:end] of a word token is exactly the word (what span-to-token mapping needs).
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counter = [0]
    backend.train_from_iterator(_checked_texts(texts, counter), trainer=trainer)
    if counter[0] == 0:
        raise ValueError("texts is empty: the tokenizer needs at least one public training text")
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(token) != token_id:
            raise RuntimeError(f"special token {token} did not get id {token_id}")
    return _wrap(backend)


def wrap_tokenizer(backend: Tokenizer, specials: dict[str, str]) -> PreTrainedTokenizerFast:
    """A checkpoint's own backend with its special tokens (keys pad, bos, eos, unk), padded on the left."""
    return _wrap(Tokenizer.from_str(backend.to_str()), dict(specials))


def _specials(tok: PreTrainedTokenizerFast) -> dict[str, str]:
    return {"pad": str(tok.pad_token), "bos": str(tok.bos_token), "eos": str(tok.eos_token),
            "unk": str(tok.unk_token)}


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Save ``tok`` (``tokenizer.json`` plus the transformers config files) into ``directory``.

    Returns the directory path; it is created if needed.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    return path


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer` (local files only, never the hub).

    Raises
    ------
    FileNotFoundError
        If ``directory`` or its ``tokenizer.json`` does not exist.
    """
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist (create it with save_tokenizer)")
    if not (path / _TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{path / _TOKENIZER_FILE} not found: {path} is not a saved fedveil tokenizer")
    # Rebuilding from tokenizer.json with _wrap, rather than from_pretrained, pins the padding side and
    # clean-up setting to fedveil's conventions whatever the config files say; the special tokens are the
    # saved ones (a checkpoint's tokenizer keeps its own), fedveil's when none were saved.
    specials = None
    config = path / "tokenizer_config.json"
    if config.is_file():
        saved = json.loads(config.read_text(encoding="utf-8"))
        named = {k: saved.get(f"{k}_token") for k in _FEDVEIL_SPECIALS}
        if all(isinstance(v, str) for v in named.values()):
            specials = {k: str(v) for k, v in named.items()}
    return _wrap(Tokenizer.from_file(str(path / _TOKENIZER_FILE)), specials)


def tokenizer_fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """SHA-256 hex digest of the tokenizer's model, normalisation and special-token settings.

    Runtime padding/truncation state (which ``transformers`` changes on the backend during batched
    calls) is excluded, so the fingerprint only changes when the tokenization itself changes.
    """
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    spec["fedveil_wrapper"] = {
        "pad": tok.pad_token,
        "bos": tok.bos_token,
        "eos": tok.eos_token,
        "unk": tok.unk_token,
        "padding_side": tok.padding_side,
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def encode_records(
    tok: PreTrainedTokenizerFast,
    texts: Sequence[str],
    max_length: int,
    add_bos: bool = True,
    add_eos: bool = True,
) -> list[list[int]]:
    """Encode each text to ids, optionally framed as ``<bos> ... <eos>``, truncated to ``max_length``.

    Truncation keeps the first ``max_length`` ids, so a cut record keeps its ``<bos>`` and loses its
    ``<eos>`` (the model is not taught that the record ended there).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a single str")
    if len(texts) == 0:
        return []
    bos_id = tok.bos_token_id if add_bos else None
    eos_id = tok.eos_token_id if add_eos else None
    encoded = tok(list(texts), add_special_tokens=False)["input_ids"]
    out: list[list[int]] = []
    for ids in encoded:
        row = ([bos_id] if isinstance(bos_id, int) else []) + list(ids)
        if isinstance(eos_id, int):
            row.append(eos_id)
        out.append(row[:max_length])
    return out


def tokenizer_to_json(tok: PreTrainedTokenizerFast) -> str:
    """The tokenizer as one JSON string, small enough to travel in a Flower ConfigRecord.

    fedveil's own tokenizers travel as the backend's JSON; a checkpoint's tokenizer, whose special
    tokens differ, travels as ``{"fedveil-specials": {...}, "backend": "<backend JSON>"}``.
    """
    backend = str(tok.backend_tokenizer.to_str())
    specials = _specials(tok)
    if specials == _FEDVEIL_SPECIALS:
        return backend
    return json.dumps({_SPECIALS_KEY: specials, "backend": backend})


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """Inverse of :func:`tokenizer_to_json`, with fedveil's special tokens and padding side."""
    specials = None
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and _SPECIALS_KEY in doc:
            raw = doc[_SPECIALS_KEY]
            if not (isinstance(raw, dict) and set(raw) == set(_FEDVEIL_SPECIALS)
                    and all(isinstance(v, str) for v in raw.values()) and isinstance(doc.get("backend"), str)):
                raise ValueError("malformed special tokens")
            specials, text = dict(raw), doc["backend"]
        backend = Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 -- the tokenizers library raises a bare Exception
        raise ValueError(f"not a serialised tokenizer: {exc}") from None
    for token in (specials or {}).values():
        if backend.token_to_id(token) is None:
            raise ValueError(f"not a serialised tokenizer: special token {token!r} is not in its vocabulary")
    return _wrap(backend, specials)
