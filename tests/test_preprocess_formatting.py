"""Prompt formatting: chat template, style prefixes, templates and their rng draws, loss masks, packing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import golden_root, require_golden

from molmo_jax.preprocess import formatting as fmt
from molmo_jax.preprocess.prompts import GENERAL_PROMPTS_V1, NO_POINT_PREFIX

CFG = fmt.FormatterConfig()


class ScriptedRng:
    """Stands in for RandomState: returns scripted values and records the calls."""

    def __init__(self, random=(), normal=(), randint=()):
        self.values = {"random": list(random), "normal": list(normal), "randint": list(randint)}
        self.calls: list[str] = []

    def random(self):
        self.calls.append("random")
        return self.values["random"].pop(0)

    def normal(self, scale=1.0):
        self.calls.append(f"normal({scale})")
        return self.values["normal"].pop(0)

    def randint(self, low, high):
        self.calls.append(f"randint({low},{high})")
        return self.values["randint"].pop(0)


def test_chat_template_puts_a_space_before_every_message():
    assert fmt.format_messages(["Hi?", "Yes.", "More?", "No."], CFG) == [
        " User: Hi? Assistant:", " Yes.", " User: More? Assistant:", " No."]
    plain = fmt.FormatterConfig(message_formatting="none", always_start_with_space=False)
    assert fmt.format_messages(["long_caption 4:", "A cat."], plain) == ["long_caption 4:", " A cat."]


def test_demo_or_style_prefix():
    def prefix(style, r=None):
        rng = ScriptedRng(random=[] if r is None else [r])
        out = fmt.system_prefix(style, for_inference=True, messages=["q"], rng=rng, cfg=CFG)
        return out, rng.calls

    assert prefix("demo") == ("", [])
    assert prefix("android_control") == ("", [])
    assert prefix("chart_qa") == ("chart_qa:", [])
    assert prefix("eval_short_answer") == ("vqa2:", [])
    assert prefix("eval_multiple_choice") == ("a_okvqa_mc:", [])
    assert prefix("point_count", 0.5) == ("", ["random"])  # dropped 90% of the time
    assert prefix("point_count", 0.1) == ("point_count:", ["random"])  # kept when random() <= 0.1
    assert prefix("long_caption", 0.05) == ("long_caption:", ["random"])
    assert prefix(None) == ("", [])
    only_style = fmt.FormatterConfig(system_prompt_kind="style")
    assert fmt.system_prefix("pointing", for_inference=True, messages=[], rng=ScriptedRng(), cfg=only_style) \
        == "pointing:"


def test_style_and_length_prefix():
    cfg = fmt.FormatterConfig(system_prompt_kind="style_and_length", prompt_type="none",
                              message_formatting="none")
    caption = "x" * 100
    rng = ScriptedRng(random=[0.5], normal=[-7.9])
    # n = 100 + int(-7.9) = 93 (truncation toward zero), then floor-divided by 15.
    assert fmt.system_prefix("long_caption", for_inference=False, messages=["", caption], rng=rng, cfg=cfg) \
        == "long_caption 6:"
    assert rng.calls == ["random", "normal(25)"]
    rng = ScriptedRng(random=[0.1])
    assert fmt.system_prefix("transcript", for_inference=False, messages=["", caption], rng=rng, cfg=cfg) \
        == "transcript :"
    assert fmt.system_prefix("long_caption", for_inference=True, messages=[""], rng=ScriptedRng(), cfg=cfg) \
        == "long_caption 65:"
    convs, _ = fmt.format_example({"text": "A red square.", "style": "long_caption"}, for_inference=False,
                                  rng=ScriptedRng(random=[0.9], normal=[3.2]), cfg=cfg)
    # prompt_type none: empty prompt -> the prefix alone; 13 chars + int(3.2) = 16 -> 16 // 15 = 1
    assert convs == [" long_caption 1:", " A red square."]


def test_long_caption_template_and_prefix_draws_follow_the_original_order():
    templates = GENERAL_PROMPTS_V1["long_caption"]
    seen = set()
    for seed in range(60):
        expected_rng = np.random.RandomState(seed)
        template = templates[expected_rng.randint(0, len(templates))]
        prefix = "" if expected_rng.random() > 0.1 else "long_caption: "
        conv, _ = fmt.format_example({"text": "A cat.", "style": "long_caption"}, for_inference=False,
                                     rng=np.random.RandomState(seed))
        assert conv == [f" User: {prefix}{template} Assistant:", " A cat."]
        seen.add(bool(prefix))
    assert seen == {True, False}


def test_pointing_examples():
    ex = {"label": "Red Dots", "points": [[10.0, 20.0], [5.04, 70.0]], "point_scale": 100,
          "style": "pointing"}
    rng = ScriptedRng(randint=[2], random=[0.5])
    conv, meta = fmt.format_example(ex, for_inference=False, rng=rng)
    assert conv == [" User: Point to any red dots in the image Assistant:",
                    ' <points x1="5.0" y1="70.0" x2="10.0" y2="20.0" alt="red dots">red dots</points>']
    assert rng.calls == ["randint(0,43)", "random"] and "points" in meta

    count = dict(ex, style="point_count", points=[[50.0, 50.0]])
    conv, _ = fmt.format_example(count, for_inference=False, rng=ScriptedRng(randint=[0], random=[0.05]))
    assert conv[0] == " User: point_count: How many red dots are there? Assistant:"
    assert conv[1] == (' Counting the <point x="50.0" y="50.0" alt="red dots">red dots</point>'
                       " shows a total of 1.")

    none = dict(ex, points=[], question="Where is the cat?")
    conv, _ = fmt.format_example(none, for_inference=False, rng=ScriptedRng(random=[0.5]))
    assert conv == [" User: Where is the cat? Assistant:", " There are none."]

    pixels = {"label": "cat", "points": [[30, 10]], "style": "pointing", "question": "cat?"}
    conv, _ = fmt.format_example(pixels, for_inference=False, rng=ScriptedRng(random=[0.5]),
                                 image_hw=(200, 600))
    assert conv[1] == ' <point x="5.0" y="5.0" alt="cat">cat</point>'
    with pytest.raises(ValueError, match="image size"):
        fmt.format_example(pixels, for_inference=False, rng=ScriptedRng(random=[0.5]))


def test_answers_options_and_annotations():
    ex = {"question": "Color?", "answers": ["red", "blue", "red", "blue", "green"], "style": "vqa2"}
    rng = ScriptedRng(randint=[1])
    conv, meta = fmt.format_example(ex, for_inference=False, rng=rng)
    assert conv == [" User: vqa2: Color? Assistant:", " blue"] and rng.calls == ["randint(0,2)"]
    assert meta["answers"] == ex["answers"]
    first = fmt.FormatterConfig(select_answer="first")
    assert fmt.format_example(ex, for_inference=False, rng=0, cfg=first)[0][1] == " blue"

    mc = {"question": "Which?", "options": ["cat", "dog"], "answer_idx": 1, "style": "a_okvqa_mc"}
    conv, meta = fmt.format_example(mc, for_inference=False, rng=0)
    assert conv == [" User: a_okvqa_mc: Which?\nA: cat\nB: dog\n Assistant:", " B"]
    assert list(meta["option_names"]) == ["A", "B"]
    free = {"question": "Which?", "unlabelled_options": ["cat", "dog"], "answer_idx": 0,
            "style": "ai2_diagram"}
    assert fmt.format_example(free, for_inference=False, rng=0)[0][1] == " cat"

    qa = {"question": "Where?", "answer": "Here <|POINT|> and <|POINT|>.", "style": "point_qa",
          "answer_annotations": [{"points": [[1, 2]], "inline_text": "a", "alt_text": "A"},
                                 {"points": [[3, 4], [5, 6]], "inline_text": "b", "alt_text": "B"}]}
    conv, _ = fmt.format_example(qa, for_inference=False, rng=0)
    assert conv[1] == (' Here <point x="1.0" y="2.0" alt="A">a</point> and '
                       '<points x1="3.0" y1="4.0" x2="5.0" y2="6.0" alt="B">b</points>.')
    with pytest.raises(ValueError, match="for_inference"):
        fmt.format_example({"question": "q", "style": "vqa2"}, for_inference=False, rng=0)


def test_message_lists_and_explicit_messages():
    ex = {"message_list": [{"question": "Q1", "answer": "A1", "style": "user_qa"},
                           {"messages": ["Q2", "A2", "Q3", "A3"], "style": "synthetic_qa"}]}
    convs, _ = fmt.format_example(ex, for_inference=False, rng=ScriptedRng(random=[0.5]))
    assert convs == [[" User: Q1 Assistant:", " A1"],
                     [" User: synthetic_qa: Q2 Assistant:", " A2", " User: Q3 Assistant:", " A3"]]
    conv, _ = fmt.format_example({"messages": ["Hi", "Hello"]}, for_inference=False, rng=0)
    assert conv == [" User: Hi Assistant:", " Hello"]


def test_no_point_prefix():
    rng = ScriptedRng(randint=[3])
    assert fmt.no_point_prefix("How many dogs?", rng) == NO_POINT_PREFIX[3] + "How many dogs?"
    assert rng.calls == ["randint(0,32)"]
    assert fmt.no_point_prefix("What is this?", ScriptedRng()) == "What is this?"


class CharTokenizer:
    """One id per character; EOS = 0."""

    eos_id = 0

    def encode(self, text):
        return [ord(c) for c in text]


def test_loss_masks_and_eos():
    tok = CharTokenizer()
    out = fmt.tokenize_messages(tok, [" U:", " ab", " V:", " c"])
    assert out.tokens.tolist() == [32, 85, 58, 32, 97, 98, 0, 32, 86, 58, 32, 99, 0]
    assert out.loss_masks.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert out.subsegments is None
    weighted = fmt.tokenize_messages(tok, [" U:", " ab"], weight=0.5)
    assert weighted.loss_masks.tolist() == [0, 0, 0, 0.5, 0.5, 0.5, 0.5]
    single = fmt.tokenize_messages(tok, [[" U:", " ab"]], weighting="root_subsegments")
    assert single.subsegments is None and single.loss_masks.max() == 1  # one conversation: not packed


def test_packing_subsegments_weights_and_positions():
    tok = CharTokenizer()
    convs = [[" U", " a"], [" V", " bc"], [" W", " d"]]
    out = fmt.tokenize_messages(tok, convs, weighting="root_subsegments")
    assert out.subsegments.tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    w = np.float32(math.sqrt(1 / 3))
    assert out.loss_masks.tolist() == [0, 0, w, w, w, 0, 0, w, w, w, w, 0, 0, w, w, w]
    # After a shared prefix (id 10000: BOS + image block) positions restart for every conversation.
    seg = np.array([10000] * 4 + [1] * 3 + [2] * 2 + [3] * 3)
    assert fmt.position_ids_from_subsegments(seg).tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5, 4, 5, 6]


def _preprocess_cases() -> list[str]:
    root = golden_root() / "preprocess"
    found = sorted(p.name for p in root.iterdir() if (p / "meta.json").exists()) if root.is_dir() else []
    return found or ["<golden preprocess folder missing>"]


@pytest.mark.golden
@pytest.mark.parametrize("case", _preprocess_cases())
def test_golden_formatted_messages(case):
    meta = json.loads(require_golden("preprocess", case, "meta.json").read_text())
    settings = meta["settings"]
    cfg = fmt.FormatterConfig(prompt_type=settings["prompt_type"],
                              message_formatting=settings["message_formatting"],
                              system_prompt_kind=settings["system_prompt_kind"],
                              always_start_with_space=settings["always_start_with_space"])
    conv, _ = fmt.format_example(meta["example"], for_inference=meta["for_inference"], rng=0, cfg=cfg)
    assert conv == meta["formatted_messages"]
