"""Tokenizers: the three real tokenizers, Molmo's special-token ids, decode rules, SentencePiece."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
from conftest import golden_root, require_golden

from molmo_jax.preprocess.tokenizer import IMAGE_TOKENS, MolmoTokenizer, TokenizerError

# Golden README section 1: tokenizer folder, padding (LLM vocab_size or none) -> ids of
# <im_start> <im_end> <im_patch> <im_col> <|image|>, EOS (= BOS), len(tokenizer) before the tokens.
README_TABLE = [
    ("Qwen2-7B", 152064, 152064, 151643, 151646),  # Molmo-7B-D
    ("allenai_dolma2-tokenizer", 100278, 100278, 100257, 100278),  # Molmo-7B-O
    ("allenai_OLMoE-1B-7B-0924", None, 50280, 50279, 50280),  # MolmoE-1B (pad_tokenizer: false)
]
TEXT = " User: Look at this picture <|image|> and tell me: naïve café, 12,345.67 €?\n Assistant:"


def _tokenizer_dirs() -> list[str]:
    root = golden_root() / "tokenizers"
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return found or ["<golden tokenizers folder missing>"]


_CACHE: dict = {}


def _load(name: str, pad_to: int | None) -> MolmoTokenizer:
    if (name, pad_to) not in _CACHE:
        folder = require_golden("tokenizers", name)
        _CACHE[name, pad_to] = MolmoTokenizer.from_pretrained(folder, pad_to=pad_to)
    return _CACHE[name, pad_to]


@pytest.mark.golden
@pytest.mark.parametrize("name, pad_to, first_id, eos, base_len", README_TABLE)
def test_special_token_ids_follow_the_readme(name, pad_to, first_id, eos, base_len):
    tok = _load(name, pad_to)
    assert [tok.image_token_ids[t] for t in IMAGE_TOKENS] == list(range(first_id, first_id + 5))
    assert (
        tok.image_start_id,
        tok.image_end_id,
        tok.image_patch_id,
        tok.image_col_id,
        tok.image_placeholder_id,
    ) == tuple(range(first_id, first_id + 5))
    assert tok.eos_id == eos and tok.bos_id == eos
    assert tok.vocab_size == first_id + 5
    unpadded = MolmoTokenizer.from_pretrained(require_golden("tokenizers", name))
    assert unpadded.image_start_id == base_len  # no padding: the tokens follow the tokenizer


@pytest.mark.golden
def test_qwen2_unpadded_ids_are_the_hub_ids():
    # MOLMO_SPEC 5.1: the released Qwen2 tokenizer files carry the tokens at 151646..151650.
    tok = _load("Qwen2-7B", None)
    assert [tok.image_token_ids[t] for t in IMAGE_TOKENS] == list(range(151646, 151651))


@pytest.mark.golden
@pytest.mark.parametrize("name", _tokenizer_dirs())
def test_api_on_every_golden_tokenizer(name):
    folder = require_golden("tokenizers", name)
    tok = _load(name, None)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok.decode([tok.eos_id], truncate_at_eos=False) == ""
    assert tok.encode(config["eos_token"]) == [tok.eos_id]  # EOS from tokenizer_config.json
    ids = tok.encode(TEXT)
    assert ids.count(tok.image_placeholder_id) == 1  # the placeholder is one token
    assert tok.eos_id not in ids and tok.bos_id not in ids  # encode adds no special tokens
    assert tok.decode(ids) == TEXT
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode(" trailing")) == TEXT
    # Each message is encoded on its own, so a leading space is part of the first token.
    assert tok.encode(" User:")[0] != tok.encode("User:")[0]


@pytest.mark.golden
def test_golden_preprocess_cases_use_our_ids():
    root = require_golden("preprocess")
    checked = 0
    for meta_path in sorted(root.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        tok = _load(meta["tokenizer"], meta["tokenizer_padded_to_vocab_size"])
        assert tok.image_token_ids == meta["special_token_ids"], meta_path
        assert (tok.eos_id, tok.bos_id) == (meta["eos_token_id"], meta["bos_token_id_used"])
        checked += 1
    assert checked > 0


@pytest.mark.golden
def test_decode_rules():
    tok = _load("Qwen2-7B", 152064)
    hello = tok.encode(" Hello world")
    eos = tok.eos_id
    assert tok.decode([eos] + hello) == " Hello world"  # leading BOS (== EOS) dropped
    assert tok.decode(hello + [eos] + tok.encode(" more")) == " Hello world"  # cut at the first EOS
    assert tok.decode([eos] + hello + [eos] + hello, truncate_at_eos=False) == " Hello world Hello world"
    assert tok.decode(hello[:1] + [tok.image_patch_id]) == " Hello<im_patch>"  # special tokens kept
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(hello + [-1])


@pytest.mark.golden
def test_checkpoint_files_with_image_tokens_decide_the_ids(tmp_path):
    # A hub-style folder: tokenizer.json already holding the image tokens (Qwen2: 151646..).
    src = require_golden("tokenizers", "Qwen2-7B")
    _load("Qwen2-7B", None).save_pretrained(tmp_path)
    (tmp_path / "added_tokens.json").unlink()  # only tokenizer.json knows the ids now
    tok = MolmoTokenizer.from_pretrained(tmp_path, pad_to=152064)  # the files win over pad_to
    assert tok.image_start_id == 151646 and tok.vocab_size == 151651 and tok.eos_id == 151643

    # added_tokens.json fixes the ids of a tokenizer.json without them (gaps padded with dummies).
    plain = tmp_path / "plain"
    plain.mkdir()
    with gzip.open(src / "tokenizer.json.gz", "rb") as f:
        (plain / "tokenizer.json").write_bytes(f.read())
    shutil.copy(src / "tokenizer_config.json", plain)
    wanted = {t: 151700 + i for i, t in enumerate(IMAGE_TOKENS)}
    (plain / "added_tokens.json").write_text(json.dumps(wanted))
    tok = MolmoTokenizer.from_pretrained(plain)
    assert tok.image_token_ids == wanted
    assert tok.encode(" <im_col>") == [tok.encode(" ")[0], 151703]


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer folder"):
        MolmoTokenizer.from_pretrained("no-such-tokenizer-anywhere")
    with pytest.raises(TokenizerError, match="not found"):
        MolmoTokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(TokenizerError, match="expected"):
        MolmoTokenizer.from_file(tmp_path / "vocab.txt")


@pytest.mark.golden
def test_save_pretrained_round_trip(tmp_path):
    tok = _load("allenai_dolma2-tokenizer", 100278)
    again = MolmoTokenizer.from_pretrained(tok.save_pretrained(tmp_path))
    assert again.image_token_ids == tok.image_token_ids and (again.eos_id, again.bos_id) == (100257, 100257)
    assert again.encode(TEXT) == tok.encode(TEXT) and again.vocab_size == tok.vocab_size


@pytest.mark.golden
def test_padding_below_the_vocabulary_is_an_error():
    with pytest.raises(TokenizerError, match="cannot pad"):
        MolmoTokenizer.from_pretrained(require_golden("tokenizers", "allenai_OLMoE-1B-7B-0924"), pad_to=512)


# ----------------------------------------------------------------------------------------------
# SentencePiece backend


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    words = ["red", "green", "blue", "circle", "square", "clock", "points", "there", "are", "three", "two"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(200)]
    (folder / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tiny"),
        vocab_size=48,
        model_type="bpe",
        bos_id=-1,
        eos_id=2,
        unk_id=0,
        pad_id=1,
        minloglevel=2,
    )
    return folder / "tiny.model"


def test_sentencepiece_backend(spm_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = MolmoTokenizer.from_file(spm_model)
    n = sp.get_piece_size()
    assert [tok.image_token_ids[t] for t in IMAGE_TOKENS] == list(range(n, n + 5))
    assert tok.eos_id == 2 and tok.bos_id == 2  # no BOS in the model -> EOS
    ids = tok.encode("red circle<|image|>two squares")
    assert ids.count(tok.image_placeholder_id) == 1
    assert ids[: ids.index(tok.image_placeholder_id)] == sp.encode("red circle")
    assert tok.decode(ids) == "red circle<|image|>two squares"
    assert tok.decode(sp.encode("blue clock") + [2] + sp.encode("red")) == "blue clock"

    padded = MolmoTokenizer.from_file(spm_model, pad_to=100)
    assert padded.image_start_id == 100 and padded.vocab_size == 105
    again = MolmoTokenizer.from_pretrained(padded.save_pretrained(spm_model.parent / "saved"))
    assert again.image_token_ids == padded.image_token_ids and again.eos_id == padded.eos_id
    assert again.encode("blue <im_patch>") == padded.encode("blue <im_patch>")


def test_sentencepiece_model_with_its_own_image_tokens(tmp_path):
    import sentencepiece as spm

    (tmp_path / "c.txt").write_text("\n".join(["a b c d e f g h"] * 50))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "c.txt"),
        model_prefix=str(tmp_path / "m"),
        vocab_size=18,
        user_defined_symbols=list(IMAGE_TOKENS),
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    tok = MolmoTokenizer.from_file(tmp_path / "m.model", pad_to=1000)  # the model's ids win
    assert tok.image_token_ids == {t: sp.piece_to_id(t) for t in IMAGE_TOKENS}
    assert tok.bos_id == sp.bos_id() and tok.eos_id == sp.eos_id()
    assert tok.image_placeholder_id in tok.encode("a <|image|> b")


def test_trained_bpe_pre_tokenizers(tmp_path):
    """`train_bpe_tokenizer(pre_tokenizer="qwen2")` splits text exactly as the released Qwen2
    tokenizer does (one token per digit); "gpt2" merges digits into multi-digit tokens."""
    from tokenizers import Tokenizer

    from molmo_jax.preprocess.tokenizer import train_bpe_tokenizer

    texts = [
        f'<point x="{x}.5" y="{y}.0" alt="cat">cat</point> at 10:{y:02d}' for x in range(100) for y in (7, 42)
    ]
    words = {}
    for pre in ("gpt2", "qwen2"):
        folder = train_bpe_tokenizer(texts * 3, tmp_path / pre, 400, pre_tokenizer=pre)
        tok = MolmoTokenizer.from_pretrained(folder)
        ids = tok.encode('x="63.5" 10:42')
        assert tok.decode(ids) == 'x="63.5" 10:42'
        words[pre] = [tok.decode([i]) for i in ids]
        trained = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if pre == "qwen2":
            path = require_golden("tokenizers", "Qwen2-7B") / "tokenizer.json.gz"
            qwen2 = Tokenizer.from_str(gzip.decompress(path.read_bytes()).decode())
            split = trained.pre_tokenizer.pre_tokenize_str(TEXT)
            assert split == qwen2.pre_tokenizer.pre_tokenize_str(TEXT)
    assert "6" in words["qwen2"] and "3" in words["qwen2"] and "63" not in words["qwen2"]
    assert not any(w.isdigit() and len(w) > 1 for w in words["qwen2"])
    assert any(w.strip().isdigit() and len(w.strip()) > 1 for w in words["gpt2"])
    with pytest.raises(ValueError, match="pre_tokenizer"):
        train_bpe_tokenizer(texts, tmp_path / "bad", 400, pre_tokenizer="llama")
