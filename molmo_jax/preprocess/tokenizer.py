"""Molmo tokenizers: HF ``tokenizers`` / SentencePiece models plus Molmo's five image tokens.

The original (``olmo/tokenizer.py: build_tokenizer``) loads the LLM's tokenizer and adds the special
tokens ``<im_start> <im_end> <im_patch> <im_col> <|image|>``. With ``pad_tokenizer`` (Molmo-7B-D,
7B-O) the vocabulary is first padded with dummy tokens ``|<EXTRA_TOKENS_i>|`` up to the LLM
``vocab_size``, so the five tokens get ids ``vocab_size + 0..4``; without it (MolmoE-1B) they follow
the tokenizer's last id. A checkpoint folder whose tokenizer files already contain the image tokens
(the Hugging Face releases: ``tokenizer.json`` / ``added_tokens.json``) keeps the ids of those files.

Text is always encoded without special tokens; the Qwen2 / OLMo tokenizers have no BOS, so EOS
doubles as BOS.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

IM_START, IM_END, IM_PATCH, IM_COL, IMAGE_PROMPT = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<|image|>",
)
IMAGE_TOKENS = (IM_START, IM_END, IM_PATCH, IM_COL, IMAGE_PROMPT)
_EOS_GUESSES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.json.gz")
_SPM_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.model")


class TokenizerError(ValueError):
    """A tokenizer file or setting that cannot give Molmo's special tokens."""


def _dummy_token(i: int) -> str:
    return f"|<EXTRA_TOKENS_{i}>|"


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_content(value) -> str | None:
    """A special-token entry of tokenizer_config.json: a string, an AddedToken dict or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class _HFBackend:
    """HF ``tokenizers.Tokenizer`` with Molmo's tokens added as special tokens."""

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def from_file(cls, path: Path) -> _HFBackend:
        from tokenizers import Tokenizer

        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return cls(Tokenizer.from_str(f.read()))
        return cls(Tokenizer.from_file(str(path)))

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def add_special(self, tokens: Sequence[str]) -> None:
        from tokenizers import AddedToken

        self.tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in tokens]
        )

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, tid: int) -> str:
        return self.tok.id_to_token(tid)

    def save(self, folder: Path) -> None:
        self.tok.save(str(folder / "tokenizer.json"))


class _SentencePieceBackend:
    """SentencePiece model; extra special tokens live above the model's pieces and are split out of
    the text before encoding (so each text chunk between them is encoded on its own)."""

    def __init__(self, sp):
        self.sp = sp
        self.extra: dict[str, int] = {}
        self._by_id: dict[int, str] = {}
        self._split: re.Pattern | None = None

    @classmethod
    def from_file(cls, path: Path) -> _SentencePieceBackend:
        import sentencepiece

        return cls(sentencepiece.SentencePieceProcessor(model_file=str(path)))

    def __len__(self) -> int:
        return self.sp.get_piece_size() + len(self.extra)

    def token_to_id(self, token: str) -> int | None:
        if token in self.extra:
            return self.extra[token]
        pid = self.sp.piece_to_id(token)
        if pid == self.sp.unk_id() and token != self.sp.id_to_piece(pid):
            return None
        return pid

    def add_special(self, tokens: Sequence[str]) -> None:
        for t in tokens:
            if self.token_to_id(t) is None:
                self.extra[t] = len(self)
        names = sorted(self.extra, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in names) + ")") if names else None
        self._by_id = {i: t for t, i in self.extra.items()}

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return self.sp.encode(text)
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self.extra:
                ids.append(self.extra[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        out, run = [], []
        for i in ids:
            if i in self._by_id:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self._by_id[i])
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def id_to_token(self, tid: int) -> str:
        return self._by_id[tid] if tid in self._by_id else self.sp.id_to_piece(tid)

    def save(self, folder: Path) -> None:
        (folder / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())

    def special_id(self, kind: str) -> int | None:
        pid = {"eos": self.sp.eos_id(), "bos": self.sp.bos_id()}[kind]
        return pid if pid >= 0 else None


class MolmoTokenizer:
    """Tokenizer with Molmo's image tokens, BOS/EOS rules and decode conventions.

    Build it with :meth:`from_file` or :meth:`from_pretrained`. ``encode`` never adds special tokens;
    ``decode`` drops a leading BOS when BOS == EOS and cuts at the first EOS.
    """

    def __init__(self, backend, *, eos_id: int, bos_id: int | None, image_token_ids: dict[str, int]):
        self._backend = backend
        self.eos_id = int(eos_id)
        self.bos_id = int(bos_id) if bos_id is not None else self.eos_id
        missing = [t for t in IMAGE_TOKENS if t not in image_token_ids]
        if missing:
            raise TokenizerError(f"image token ids missing for {missing}")
        self.image_token_ids = {t: int(image_token_ids[t]) for t in IMAGE_TOKENS}

    # Special ids ----------------------------------------------------------------------------
    @property
    def image_start_id(self) -> int:
        return self.image_token_ids[IM_START]

    @property
    def image_end_id(self) -> int:
        return self.image_token_ids[IM_END]

    @property
    def image_patch_id(self) -> int:
        return self.image_token_ids[IM_PATCH]

    @property
    def image_col_id(self) -> int:
        return self.image_token_ids[IM_COL]

    @property
    def image_placeholder_id(self) -> int:
        return self.image_token_ids[IMAGE_PROMPT]

    @property
    def vocab_size(self) -> int:
        """Number of ids in use, special and padding tokens included (HF ``len(tokenizer)``)."""
        return len(self._backend)

    def __len__(self) -> int:
        return self.vocab_size

    # Text ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS added. ``<|image|>`` and the other image tokens are
        recognised as single tokens."""
        return list(self._backend.encode(text))

    def decode(self, ids: Iterable[int], *, truncate_at_eos: bool = True) -> str:
        """Text of ``ids``: a leading BOS is dropped when BOS == EOS; cut at the first EOS (or, with
        ``truncate_at_eos=False``, every BOS/EOS removed). Special image tokens are kept as text."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i < 0 or i >= self.vocab_size]
        if bad:
            raise ValueError(
                f"token ids out of range [0, {self.vocab_size}): {bad[:5]} (strip -1 padding before decoding)"
            )
        if self.bos_id == self.eos_id and ids and ids[0] == self.eos_id:
            ids = ids[1:]
        if truncate_at_eos:
            if self.eos_id in ids:
                ids = ids[: ids.index(self.eos_id)]
        else:
            ids = [i for i in ids if i not in (self.eos_id, self.bos_id)]
        return self._backend.decode(ids)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (or ``tokenizer.model``), ``tokenizer_config.json`` (EOS, BOS) and
        ``added_tokens.json`` (image-token ids) so that :meth:`from_pretrained` rebuilds this tokenizer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._backend.save(folder)
        eos = self._backend.id_to_token(self.eos_id)
        bos = None if self.bos_id == self.eos_id else self._backend.id_to_token(self.bos_id)
        config = {"eos_token": eos, "bos_token": bos}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (folder / "added_tokens.json").write_text(json.dumps(self.image_token_ids, indent=2))
        return folder

    # Construction -------------------------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        pad_to: int | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
        added_tokens: dict[str, int] | None = None,
    ) -> MolmoTokenizer:
        """Load ``tokenizer.json`` / ``tokenizer.json.gz`` (HF ``tokenizers``) or a SentencePiece
        ``.model`` file and add the image tokens.

        Args:
          pad_to: pad the vocabulary with dummy tokens to this size first (the LLM ``vocab_size`` of
            checkpoints with ``pad_tokenizer``), so the image tokens get ids ``pad_to + 0..4``.
          eos_token, bos_token: override the special tokens (default: ``tokenizer_config.json`` next to
            the file, else the model's own / a common EOS such as ``<|endoftext|>``). No BOS -> EOS.
          added_tokens: required ids of some tokens (``added_tokens.json`` of a checkpoint).

        If the image tokens already exist in the file (or ``added_tokens``), those ids are used and
        ``pad_to`` is ignored.
        """
        path = Path(path)
        if not path.exists():
            raise TokenizerError(f"tokenizer file not found: {path}")
        if path.suffix == ".model":
            backend = _SentencePieceBackend.from_file(path)
        elif path.name.endswith((".json", ".json.gz")):
            backend = _HFBackend.from_file(path)
        else:
            raise TokenizerError(f"{path}: expected tokenizer.json(.gz) or a SentencePiece .model file")
        config = _read_json(path.parent / "tokenizer_config.json") or {}
        special_map = _read_json(path.parent / "special_tokens_map.json") or {}
        eos_token = (
            eos_token
            or _token_content(config.get("eos_token"))
            or _token_content(special_map.get("eos_token"))
        )
        if bos_token is None:
            bos_token = _token_content(config.get("bos_token", special_map.get("bos_token")))
        eos_id, bos_id = _resolve_eos_bos(backend, eos_token, bos_token, path)

        if added_tokens:
            _add_at_ids(backend, added_tokens, path)
        existing = {t: backend.token_to_id(t) for t in IMAGE_TOKENS}
        if all(i is not None for i in existing.values()):
            image_ids = existing
        elif any(i is not None for i in existing.values()):
            have = {t: i for t, i in existing.items() if i is not None}
            raise TokenizerError(f"{path}: has only some of Molmo's image tokens ({have})")
        else:
            if pad_to is not None:
                n = len(backend)
                if pad_to < n:
                    raise TokenizerError(f"{path}: cannot pad a tokenizer of {n} tokens to {pad_to}")
                backend.add_special([_dummy_token(i) for i in range(pad_to - n)])
            backend.add_special(list(IMAGE_TOKENS))
            image_ids = {t: backend.token_to_id(t) for t in IMAGE_TOKENS}
            if pad_to is not None and [image_ids[t] for t in IMAGE_TOKENS] != list(range(pad_to, pad_to + 5)):
                raise TokenizerError(
                    f"{path}: image tokens got ids {image_ids}, expected {pad_to}..{pad_to + 4}"
                )
        return cls(backend, eos_id=eos_id, bos_id=bos_id, image_token_ids=image_ids)

    @classmethod
    def from_pretrained(
        cls, dir_or_name: str | os.PathLike, *, pad_to: int | None = None, **kwargs
    ) -> MolmoTokenizer:
        """Load from a folder (a checkpoint or a tokenizer folder) or a tokenizer name.

        A name (``"Qwen2-7B"``, ``"allenai/dolma2-tokenizer"`` -> ``allenai_dolma2-tokenizer``) is
        looked up in ``$MOLMO_TOKENIZER_DIR``, ``$MOLMO_GOLDEN_DIR/tokenizers`` and the project's
        ``../shared/golden/tokenizers``. ``added_tokens.json`` in the folder fixes token ids.
        """
        folder = resolve_tokenizer_dir(dir_or_name)
        file = find_tokenizer_file(folder)
        added = _read_json(folder / "added_tokens.json")
        if added and "added_tokens" not in kwargs:
            kwargs["added_tokens"] = {str(k): int(v) for k, v in added.items()}
        return cls.from_file(file, pad_to=pad_to, **kwargs)


def _resolve_eos_bos(backend, eos_token: str | None, bos_token: str | None, path: Path):
    def lookup(token: str, what: str) -> int:
        tid = backend.token_to_id(token)
        if tid is None:
            raise TokenizerError(f"{path}: {what} token {token!r} is not in the vocabulary")
        return tid

    if eos_token is not None:
        eos_id = lookup(eos_token, "EOS")
    elif isinstance(backend, _SentencePieceBackend) and backend.special_id("eos") is not None:
        eos_id = backend.special_id("eos")
    else:
        found = [backend.token_to_id(t) for t in _EOS_GUESSES if backend.token_to_id(t) is not None]
        if not found:
            raise TokenizerError(
                f"{path}: cannot tell the EOS token; pass eos_token=... or add a tokenizer_config.json"
            )
        eos_id = found[0]
    if bos_token is not None:
        bos_id = lookup(bos_token, "BOS")
    elif isinstance(backend, _SentencePieceBackend):
        bos_id = backend.special_id("bos")
    else:
        bos_id = None
    return eos_id, bos_id


def _add_at_ids(backend, wanted: dict[str, int], path: Path) -> None:
    """Add tokens so that each gets its required id (dummy tokens fill gaps)."""
    for token, tid in sorted(wanted.items(), key=lambda kv: kv[1]):
        current = backend.token_to_id(token)
        if current is not None:
            if current != tid:
                raise TokenizerError(f"{path}: {token!r} has id {current}, added_tokens.json says {tid}")
            continue
        n = len(backend)
        if tid < n:
            raise TokenizerError(f"{path}: id {tid} for {token!r} is already taken")
        backend.add_special([_dummy_token(i) for i in range(n, tid)] + [token])


def _tokenizer_search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("MOLMO_TOKENIZER_DIR"):
        dirs.append(Path(os.environ["MOLMO_TOKENIZER_DIR"]))
    if os.environ.get("MOLMO_GOLDEN_DIR"):
        dirs.append(Path(os.environ["MOLMO_GOLDEN_DIR"]) / "tokenizers")
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "golden" / "tokenizers")
    return dirs


def resolve_tokenizer_dir(dir_or_name: str | os.PathLike) -> Path:
    """A folder path, or a tokenizer name resolved in the tokenizer search folders."""
    path = Path(dir_or_name)
    if path.is_dir():
        return path
    name = str(dir_or_name)
    candidates = [name, name.replace("/", "_"), name.split("/")[-1]]
    tried = []
    for base in _tokenizer_search_dirs():
        for cand in candidates:
            folder = base / cand
            tried.append(str(folder))
            if folder.is_dir():
                return folder
    raise TokenizerError(f"no tokenizer folder for {name!r}; tried {tried}")


def find_tokenizer_file(folder: Path) -> Path:
    for name in _TOKENIZER_FILES + _SPM_FILES:
        if (folder / name).exists():
            return folder / name
    models = sorted(folder.glob("*.model"))
    if models:
        return models[0]
    raise TokenizerError(f"{folder}: no tokenizer.json(.gz) or SentencePiece .model file")


# Qwen2's pre-tokenizer split (its released tokenizer.json): every digit is a token of its own.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_bpe_tokenizer(
    texts: Iterable[str],
    folder: str | os.PathLike,
    vocab_size: int,
    eos_token: str = "<|endoftext|>",
    pre_tokenizer: str = "gpt2",
) -> Path:
    """Train a byte-level BPE on `texts` (the `tokenizers` library) and save it to `folder` with its
    EOS token, in the layout `MolmoTokenizer.from_pretrained` reads. For models trained from scratch
    (the demo); released checkpoints bring their own tokenizer.

    `pre_tokenizer`: "gpt2" (byte-level regex: numbers merge into multi-digit tokens) or "qwen2"
    (Qwen2's split: one token per digit, so "12.5" is four tokens and every coordinate, count and
    time is spelled with the same ten digit tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if pre_tokenizer == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif pre_tokenizer == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(f"pre_tokenizer={pre_tokenizer!r}; choose 'gpt2' or 'qwen2'")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token, "bos_token": None}))
    return folder
