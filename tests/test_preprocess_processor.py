"""MolmoProcessor end to end: golden preprocessing and model-case inputs, training format, collation.

The model cases' images are scikit-image sample photographs (test dependency ``scikit-image``),
regenerated as the golden meta.json describes: ``skimage.data.<name>()``, PIL bicubic resize when a
size is given, PNG.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
from conftest import golden_root, require_golden
from PIL import Image

from molmo_jax.preprocess import MolmoProcessor, MolmoTokenizer, SequenceTooLongError
from molmo_jax.preprocess.image import ImagePreprocessConfig

_TOKENIZERS: dict = {}


def _tokenizer(name: str, pad_to: int | None) -> MolmoTokenizer:
    if (name, pad_to) not in _TOKENIZERS:
        folder = require_golden("tokenizers", name)
        _TOKENIZERS[name, pad_to] = MolmoTokenizer.from_pretrained(folder, pad_to=pad_to)
    return _TOKENIZERS[name, pad_to]


@pytest.fixture(scope="module")
def proc_7b_d() -> MolmoProcessor:
    return MolmoProcessor(_tokenizer("Qwen2-7B", 152064))


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Golden preprocessing cases: every integer array and the loss masks exactly


def _preprocess_cases() -> list[str]:
    root = golden_root() / "preprocess"
    found = sorted(p.name for p in root.iterdir() if (p / "case.npz").exists()) if root.is_dir() else []
    return found or ["<golden preprocess folder missing>"]


@pytest.mark.golden
@pytest.mark.parametrize("case", _preprocess_cases())
def test_golden_preprocess_case(case):
    folder = require_golden("preprocess", case)
    ref = np.load(folder / "case.npz")
    meta = json.loads((folder / "meta.json").read_text())
    settings = meta["settings"]
    proc = MolmoProcessor(
        _tokenizer(meta["tokenizer"], meta["tokenizer_padded_to_vocab_size"]),
        ImagePreprocessConfig(max_crops=settings["max_crops"], crop_mode=settings["crop_mode"],
                              overlap_margins=tuple(settings["overlap_margins"]),
                              use_col_tokens=settings["use_col_tokens"]))
    example = dict(meta["example"], image=folder / meta["image_file"])
    out = proc.process_example(example, for_inference=meta["for_inference"])
    for key in ("input_ids", "target_tokens", "position_ids", "image_input_idx", "loss_masks"):
        assert out[key].shape == ref[key].shape, key
        np.testing.assert_array_equal(out[key], ref[key], err_msg=key)
    assert len(out["images"]) == int(ref["n_crops"])
    assert np.abs(out["image_masks"] - ref["image_masks"]).max() <= 1e-6
    assert np.abs(out["images"][:, ::5, ::7] - ref["images_sub"]).max() <= 1e-5
    assert out["metadata"]["image_size"] == tuple(ref["original_size_hw"][::-1].tolist())
    if meta["for_inference"]:  # the simple call gives the same model inputs
        inputs = proc(images=folder / meta["image_file"], text=meta["example"]["prompt"],
                      style=meta["example"]["style"])
        np.testing.assert_array_equal(inputs["input_ids"], ref["input_ids"])
        np.testing.assert_array_equal(inputs["image_input_idx"], ref["image_input_idx"])


# ----------------------------------------------------------------------------------------------
# Golden model cases: prompts + images -> collated batch


def _model_cases() -> list[tuple[str, str]]:
    root = golden_root() / "models"
    found = []
    for meta_path in sorted(root.glob("*/meta.json")) if root.is_dir() else []:
        meta = json.loads(meta_path.read_text())
        found += [(meta_path.parent.name, c["file"]) for c in meta.get("cases", [])]
    return found or [("<golden models folder missing>", "")]


def _sample_image(source: str) -> bytes:
    """``name`` or ``name_WxH``: skimage.data photograph, PIL bicubic resize, PNG bytes."""
    import skimage.data

    m = re.fullmatch(r"([a-z_]+?)(?:_(\d+)x(\d+))?", source)
    image = Image.fromarray(getattr(skimage.data, m.group(1))())
    if m.group(2):
        image = image.resize((int(m.group(2)), int(m.group(3))), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.golden
@pytest.mark.parametrize("family, case_file", _model_cases())
def test_golden_model_case_inputs(family, case_file):
    folder = require_golden("models", family)
    meta = json.loads((folder / "meta.json").read_text())
    case = next(c for c in meta["cases"] if c["file"] == case_file)
    ref = np.load(folder / case_file)
    tok = _tokenizer(meta["tokenizer"], meta["real_vocab_size"])
    proc = MolmoProcessor.from_pretrained(folder, tokenizer=tok)  # image settings from config.json
    examples = [proc(images=None if src is None else _sample_image(src), text=prompt)
                for prompt, src in zip(case["prompts"], case["image_sources"])]
    batch = proc.collate(examples)
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids_real_tokenizer"])
    valid = ref["attention_mask"]
    np.testing.assert_array_equal(batch["position_ids"][valid], ref["position_ids"][valid])
    assert (batch["position_ids"][~valid] == -1).all()
    if "image_input_idx" not in ref:
        assert batch["images"].shape[1] == 0  # text-only rows carry zero crops
        return
    np.testing.assert_array_equal(batch["image_input_idx"], ref["image_input_idx"])
    shared = np.load(folder / str(ref["images_file"]))
    assert shared["image_sources"].tolist() == case["image_sources"]
    assert batch["images"].shape == shared["images"].shape
    assert np.abs(batch["images"] - shared["images"]).max() <= 1e-5
    assert np.abs(batch["image_masks"] - shared["image_masks"]).max() <= 1e-6


# ----------------------------------------------------------------------------------------------
# Construction


@pytest.mark.golden
def test_from_pretrained_presets_and_overrides():
    require_golden("tokenizers")
    proc = MolmoProcessor.from_pretrained("allenai/Molmo-7B-D-0924")
    assert proc.tokenizer.image_start_id == 152064 and proc.image_config == ImagePreprocessConfig()
    assert MolmoProcessor.from_pretrained("Molmo-7B-O").tokenizer.image_start_id == 100278
    assert MolmoProcessor.from_pretrained("molmo_7b_d").tokenizer.image_start_id == 152064
    small = MolmoProcessor.from_pretrained("MolmoE-1B", max_crops=4, crop_size=112, overlap_margins=(2, 2),
                                           system_prompt_kind="none")
    assert small.tokenizer.image_start_id == 50280
    assert (small.image_config.max_crops, small.image_config.crop_size) == (4, 112)
    assert small.format_config.system_prompt_kind == "none"
    with pytest.raises(TypeError, match="unknown MolmoProcessor setting"):
        MolmoProcessor.from_pretrained("Molmo-7B-D", max_crop=4)
    with pytest.raises(ValueError, match="neither a checkpoint folder"):
        MolmoProcessor.from_pretrained("Molmo-13B")


@pytest.mark.golden
def test_from_pretrained_checkpoint_folder(tmp_path):
    src = require_golden("tokenizers", "allenai_dolma2-tokenizer")
    import gzip

    with gzip.open(src / "tokenizer.json.gz", "rb") as f:
        (tmp_path / "tokenizer.json").write_bytes(f.read())
    (tmp_path / "tokenizer_config.json").write_text((src / "tokenizer_config.json").read_text())
    config = {"vocab_size": 100278, "embedding_size": 100352, "max_crops": 6, "overlap_margins": [2, 2],
              "vision_backbone": {"image_default_input_size": [224, 224], "image_patch_size": 14,
                                  "image_model_type": "siglip"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    preprocessor = {"max_crops": 8, "image_padding_mask": True}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    proc = MolmoProcessor.from_pretrained(tmp_path)
    cfg = proc.image_config
    assert (cfg.max_crops, cfg.overlap_margins, cfg.crop_size, cfg.normalize) == (8, (2, 2), 224, "siglip")
    assert proc.tokenizer.image_start_id == 100278  # pad_tokenizer defaults on: vocab_size + 0..4
    out = proc(images=_random_image(300, 500), text="Hi")
    assert out["images"].shape[1:] == (256, 588) and out["image_input_idx"].shape[1] == 64
    preprocessor["image_token_length_w"] = 12  # inconsistent with 224-px crops (8 tokens)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    with pytest.raises(ValueError, match="image_token_length_w=12"):
        MolmoProcessor.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------
# Behaviour


def _check_image_index(proc: MolmoProcessor, out: dict) -> None:
    """Every <im_patch> position receives exactly one pooled feature and nothing else does."""
    idx = out["image_input_idx"]
    valid = np.sort(idx[idx >= 0])
    np.testing.assert_array_equal(valid, np.nonzero(out["input_ids"] == proc.tokenizer.image_patch_id)[0])


def test_inference_call_layout(proc_7b_d):
    out = proc_7b_d(images=_random_image(480, 640), text="Describe this image.")
    assert set(out) == {"input_ids", "position_ids", "images", "image_masks", "image_input_idx"}
    tok = proc_7b_d.tokenizer
    assert out["input_ids"].shape == (749,) and out["input_ids"][0] == tok.bos_id
    # MOLMO_SPEC 5.10: 0 BOS, 1 <im_start>, 158 <im_end>, 159 <im_start> (hi-res), 740 <im_end>, text.
    assert out["input_ids"][[1, 158, 159, 740]].tolist() == [tok.image_start_id, tok.image_end_id,
                                                            tok.image_start_id, tok.image_end_id]
    assert out["input_ids"][741:].tolist() == tok.encode(" User: Describe this image. Assistant:")
    np.testing.assert_array_equal(out["position_ids"], np.arange(749))
    assert out["image_input_idx"][1, 0] == 160 and out["image_input_idx"].dtype == np.int32
    _check_image_index(proc_7b_d, out)


def test_text_only_inference_has_no_bos(proc_7b_d):
    out = proc_7b_d(text="Hello")
    assert out["input_ids"].tolist() == proc_7b_d.tokenizer.encode(" User: Hello Assistant:")
    assert out["images"].shape == (0, 576, 588) and out["image_input_idx"].shape == (0, 144)


def test_placeholder_and_several_images(proc_7b_d):
    tok = proc_7b_d.tokenizer
    a, b = _random_image(100, 100, 1), _random_image(200, 500, 2)
    out = proc_7b_d(images=[a, b], text="First <|image|> then <|image|> done")
    assert tok.image_placeholder_id not in out["input_ids"]
    assert (out["input_ids"] == tok.image_start_id).sum() == 4  # two blocks per image
    _check_image_index(proc_7b_d, out)
    start = proc_7b_d(images=[a, b], text="Both")  # no placeholder: both blocks before the text
    _check_image_index(proc_7b_d, start)
    text = tok.encode(" User: Both Assistant:")
    assert start["input_ids"][-len(text):].tolist() == text
    with pytest.raises(ValueError, match="placeholder"):
        proc_7b_d(images=[a], text="<|image|> and <|image|>")
    with pytest.raises(ValueError, match="placeholder"):
        proc_7b_d(text="<|image|> without an image")


def test_training_format_single_conversation(proc_7b_d):
    tok = proc_7b_d.tokenizer
    out = proc_7b_d(images=_random_image(90, 120), messages=["What is it?", "Noise."])
    target = out["target_tokens"]
    answer = tok.encode(" Noise.") + [tok.eos_id]
    assert target[-len(answer):].tolist() == answer
    assert out["input_ids"].tolist() == [tok.bos_id] + target[:-1].tolist()  # shifted right with BOS
    assert out["loss_masks"].tolist() == [0.0] * (len(target) - len(answer)) + [1.0] * len(answer)
    assert "subsegment_ids" not in out
    weighted = proc_7b_d(images=_random_image(90, 120), messages=["What is it?", "Noise."], weight=0.25)
    assert weighted["loss_masks"].max() == 0.25


def test_training_format_packed_conversations(proc_7b_d):
    tok = proc_7b_d.tokenizer
    convs = [["Q one?", "A one."], ["Q two?", "A two.", "Q three?", "A three."]]
    out = proc_7b_d(images=_random_image(300, 300), messages=convs)
    seg, pos, ids = out["subsegment_ids"], out["position_ids"], out["input_ids"]
    n_image = 316
    assert seg[: 1 + n_image].tolist() == [10000] * (1 + n_image)  # BOS + image block
    first = len(tok.encode(" User: Q one? Assistant:")) + len(tok.encode(" A one.")) + 1
    assert (seg[1 + n_image: 1 + n_image + first] == 1).all() and (seg[1 + n_image + first:] == 2).all()
    # Positions restart after the image for each conversation.
    assert pos[1 + n_image] == 1 + n_image and pos[1 + n_image + first] == 1 + n_image
    w = np.float32(math.sqrt(1 / 2))
    assert set(np.unique(out["loss_masks"]).tolist()) == {0.0, float(w)}
    assert ids[0] == tok.bos_id and len(ids) == len(out["target_tokens"])


def test_process_example_with_message_list_and_shuffle(proc_7b_d):
    ex = {"image": _random_image(64, 64), "style": "user_qa",
          "message_list": [{"question": f"Q{i}", "answer": f"A{i}", "style": "user_qa"} for i in range(4)]}
    plain = proc_7b_d.process_example(ex, rng=np.random.RandomState(3))
    shuffled = proc_7b_d.process_example(ex, shuffle_conversations=True, rng=np.random.RandomState(3))
    assert sorted(plain["target_tokens"].tolist()) == sorted(shuffled["target_tokens"].tolist())
    assert not np.array_equal(plain["target_tokens"], shuffled["target_tokens"])
    assert plain["metadata"]["image_size"] == (64, 64)


def test_collate_pads_with_minus_one(proc_7b_d):
    a = proc_7b_d(images=_random_image(100, 100), text="Short")  # 2 crops
    b = proc_7b_d(images=_random_image(300, 500), text="A longer question here?")  # 3 crops
    c = proc_7b_d(text="Text only")
    batch = proc_7b_d.collate([a, b, c], pad_to_length=1024, max_crops=13)
    assert batch["input_ids"].shape == (3, 1024) and batch["images"].shape == (3, 13, 576, 588)
    assert (batch["input_ids"][0, len(a["input_ids"]):] == -1).all()
    assert (batch["images"][0, 2:] == -1).all() and (batch["image_input_idx"][1, 3:] == -1).all()
    assert (batch["image_masks"][2] == -1).all()
    assert (batch["position_ids"][2, len(c["input_ids"]):] == -1).all()
    np.testing.assert_array_equal(batch["images"][1, :3], b["images"])
    packed = proc_7b_d(images=_random_image(50, 50), messages=[["q", "a"], ["q2", "a2"]])
    single = proc_7b_d(images=_random_image(50, 50), messages=["q", "a"])
    mixed = proc_7b_d.collate([packed, single])
    assert (mixed["subsegment_ids"][1, : len(single["input_ids"])] == 1).all()
    assert mixed["loss_masks"].dtype == np.float32 and mixed["input_ids"].dtype == np.int64
    cut = dict(a, input_ids=a["input_ids"][:-3])
    with pytest.raises(ValueError, match="'position_ids' has length"):
        proc_7b_d.collate([cut, b])


def test_sequence_budget_errors(proc_7b_d):
    a = proc_7b_d(images=_random_image(480, 640), text="Describe this image.")
    with pytest.raises(SequenceTooLongError, match="749 tokens"):
        proc_7b_d.collate([a], pad_to_length=512)
    with pytest.raises(ValueError, match="7 crops"):
        proc_7b_d.collate([a], max_crops=5)
    tight = MolmoProcessor(proc_7b_d.tokenizer, max_sequence_length=700)
    with pytest.raises(SequenceTooLongError, match="max_sequence_length=700"):
        tight(images=_random_image(480, 640), text="Describe this image.")
    with pytest.raises(ValueError, match="exactly one of"):
        proc_7b_d(images=None)


@pytest.mark.parametrize("hw", [(1, 1), (40, 3000), (3000, 40), (777, 333), (224, 1120)])
def test_every_patch_token_gets_one_feature(proc_7b_d, hw):
    _check_image_index(proc_7b_d, proc_7b_d(images=_random_image(*hw), text="?"))


def test_small_demo_settings_end_to_end(proc_7b_d):
    demo = MolmoProcessor(proc_7b_d.tokenizer, ImagePreprocessConfig(crop_size=112, overlap_margins=(2, 2),
                                                                     max_crops=4))
    out = demo(images=_random_image(120, 200), text="Count the shapes.")
    assert out["images"].shape[1:] == (64, 588) and out["image_input_idx"].shape[1] == 16
    _check_image_index(demo, out)
