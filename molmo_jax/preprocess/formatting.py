"""Text side of Molmo examples: prompts, style prefixes, chat template, token ids and loss masks.

Reproduces the original ``DataFormatter`` (``olmo/data/data_formatter.py``) and the text part of
``MultiModalPreprocessor.__call__``:

* an example dict (``prompt`` / ``question`` / ``answer(s)`` / ``label`` + ``points`` / ``options`` /
  ``messages`` / ``message_list`` and a ``style``) becomes one conversation (a list of strings,
  user turn first) or several (``message_list``: several conversations about one image, packed);
* a style prefix (``system_prompt_kind``) is put before the first user turn, then every user turn
  becomes ``"User: ... Assistant:"`` and every message gets a leading space;
* each message is tokenised separately; assistant messages get EOS; the loss mask is 1 (or the
  example weight) on assistant tokens and their EOS.

Randomness (template choice, answer choice, the 10% style-prefix draw of demo styles, the length
noise of stage-1 prompts) comes from one ``np.random.RandomState`` consumed in the original order,
so a per-example seed reproduces the original prompts exactly.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from molmo_jax.preprocess.prompts import (
    DEMO_STYLES,
    EVAL_STYLE_ALIASES,
    GENERAL_PROMPTS_V1,
    NO_POINT_PREFIX,
    NO_PREFIX_STYLES,
)

IMAGE_SUBSEGMENT = 10000  # subsegment id of the shared image block of packed conversations
_PROMPT_TYPES = ("uber_model", "none")
_MESSAGE_FORMATS = ("role", "none")
_SYSTEM_KINDS = ("none", "style", "demo_or_style", "style_and_length")

Conversation = list[str]
RngLike = np.random.RandomState | int | None


@dataclasses.dataclass(frozen=True)
class FormatterConfig:
    """Prompt settings; the defaults are those of the released models (stage-2 / evaluation).

    Stage-1 captioning used ``prompt_type="none", message_formatting="none",
    system_prompt_kind="style_and_length", multi_annotation_weighting=None``.
    """

    prompt_type: str = "uber_model"
    message_formatting: str = "role"
    system_prompt_kind: str = "demo_or_style"
    always_start_with_space: bool = True
    default_inference_len: int | None = 65
    select_answer: str = "best"  # "best": most frequent answer (random among ties); "first": min()
    multi_annotation_weighting: str | None = "root_subsegments"
    debug: bool = False  # deterministic: first template, no dropped prefixes

    def __post_init__(self):
        checks = (
            ("prompt_type", _PROMPT_TYPES),
            ("message_formatting", _MESSAGE_FORMATS),
            ("system_prompt_kind", _SYSTEM_KINDS),
            ("select_answer", ("best", "first")),
            ("multi_annotation_weighting", (None, "root_subsegments")),
        )
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


class _LazyRandomState:
    """A seeded RandomState created on first use (most prompts never draw)."""

    def __init__(self, seed: int):
        self._seed, self._rng = seed, None

    def __getattr__(self, name: str):
        if self._rng is None:
            self._rng = np.random.RandomState(self._seed)
        return getattr(self._rng, name)


def as_rng(rng: RngLike) -> np.random.RandomState:
    """A RandomState from a seed or None (seed 0: deterministic; for demo styles it keeps no prefix).
    A RandomState (or any object with its ``random/randint/normal/shuffle`` methods) is used as is."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return _LazyRandomState(0 if rng is None else int(rng))  # type: ignore[return-value]
    return rng


# ----------------------------------------------------------------------------------------------
# Prompts


def fill_template(
    templates: Sequence[str], values: Mapping[str, str], rng: np.random.RandomState, debug: bool = False
) -> str:
    """Draw a template (``rng.randint(0, n)``) and fill its ``{keyword}`` (first occurrence, as the
    original)."""
    keywords = sorted(re.findall("{([^{}]+)}", templates[0]))
    for k in keywords:
        if k not in values:
            raise KeyError(f"example has no field {k!r} needed by the prompt templates")
    prompt = templates[0] if debug else templates[rng.randint(0, len(templates))]
    for k in keywords:
        parts = prompt.split("{" + k + "}", maxsplit=2)
        prompt = parts[0] + values[k] + parts[1]
    return prompt


def select_answer(answers, rng: np.random.RandomState, cfg: FormatterConfig):
    """One target from a list of reference answers (most frequent; ties broken with the rng)."""
    if answers is None or isinstance(answers, str):
        return answers
    if cfg.select_answer == "first":
        return min(answers)
    counts = Counter(answers)
    best = max(counts.values())
    candidates = [a for a, c in counts.items() if c == best]
    return candidates[rng.randint(0, len(candidates))]


def points_answer(example: Mapping[str, Any], image_hw: tuple[int, int] | None) -> str | None:
    """Target text of a pointing / counting example (``None`` when it has no ``points``).

    ``points`` [N, 2] (x, y) are pixels of the loaded image, or already scaled to ``point_scale``
    (PixMo-Points: 100) when the example has ``point_scale``.
    """
    if "points" not in example:
        return None
    from molmo_jax.preprocess import pointing

    style = example.get("style")
    label = example["label"].lower() if "label" in example else example["question"]
    points = np.asarray(example["points"], dtype=np.float64).reshape(-1, 2)
    if len(points) == 0 and style not in ("pointing", "point_count"):
        raise ValueError(f"example of style {style!r} has an empty 'points' list")
    if "point_scale" in example:
        percent = points * (100 / example["point_scale"])
    else:
        if image_hw is None:
            raise ValueError("pixel 'points' need the image size (image_hw)")
        percent = pointing.points_to_percent(points, image_hw[1], image_hw[0])
    if style == "point_count":
        return pointing.point_count_answer(percent, label)
    return pointing.pointing_answer(percent, label)


def format_options(example: Mapping[str, Any]) -> tuple[str | None, str, dict]:
    """Multiple choice: ``question + "\\n" + "A: opt\\nB: opt..." + "\\n"``; target = the letter (or the
    option text for ``unlabelled_options``)."""
    if "options" in example:
        letters = "ABCDEFG"
        options = example["options"]
        if len(options) > len(letters):
            raise ValueError(f"at most {len(letters)} labelled options, got {len(options)}")
        option_text = "\n".join(f"{p}: {o}" for p, o in zip(letters, options))
        names: Sequence[str] = letters[: len(options)]
        labels: Sequence[str] = letters
    else:
        options = example["unlabelled_options"]
        option_text = "\n".join(options)
        names = labels = options
    output = labels[example["answer_idx"]] if "answer_idx" in example else None
    return output, example["question"] + "\n" + option_text + "\n", {"option_names": names}


def user_prompt(
    example: Mapping[str, Any],
    *,
    for_inference: bool,
    rng: np.random.RandomState,
    cfg: FormatterConfig,
    image_hw: tuple[int, int] | None = None,
):
    """(prompt, target or None, metadata) of an example dict (the original ``get_user_prompt``)."""
    style = example.get("style")
    output, metadata = None, None
    if "prompt" in example:
        prompt = example["prompt"]
    elif style in ("pointing", "point_count"):
        if "question" in example:
            prompt = example["question"]
        else:
            label = example["label"].lower() if "label" in example else example["label_cased"]
            if cfg.prompt_type == "uber_model":
                prompt = fill_template(GENERAL_PROMPTS_V1[style], dict(example, label=label), rng, cfg.debug)
            else:
                prompt = label
        output = points_answer(example, image_hw)
    elif cfg.prompt_type == "uber_model" and style == "long_caption":
        prompt = fill_template(GENERAL_PROMPTS_V1["long_caption"], example, rng, cfg.debug)
    elif "question" in example and ("options" in example or "unlabelled_options" in example):
        output, prompt, metadata = format_options(example)
    elif "question" in example:
        prompt = example["question"]
    else:
        prompt = ""

    if output is None and not for_inference:
        if "answers" in example:
            output = select_answer(example["answers"], rng, cfg)
        elif "answer" in example:
            output = example["answer"]
            if "answer_annotations" in example:
                output = annotate_answer(output, example["answer_annotations"])
        elif "answer_with_points" in example:
            output = example["answer_with_points"]
        elif "text" in example:
            output = example["text"]
        else:
            raise ValueError(
                "example has no target (answers / answer / answer_with_points / text); "
                "use for_inference=True for prompts without answers"
            )
    return prompt, output, metadata


def annotate_answer(answer: str, annotations: Sequence[Mapping[str, Any]]) -> str:
    """Replace each ``<|POINT|>`` of a Point-Explanations answer, in order, by point markup (points
    in 0-100 units)."""
    from molmo_jax.preprocess import pointing

    for ann in annotations:
        parts = answer.split("<|POINT|>", maxsplit=1)
        if len(parts) != 2:
            raise ValueError("answer has fewer <|POINT|> slots than annotations")
        points = np.asarray(ann["points"], np.float64)
        markup = pointing.format_points(points, ann["alt_text"], ann["inline_text"])
        answer = parts[0] + markup + parts[1]
    return answer


def system_prefix(
    style: str | None,
    *,
    for_inference: bool,
    messages: Sequence[str],
    rng: np.random.RandomState,
    cfg: FormatterConfig,
) -> str:
    """Style prefix put before the first user message (the original ``get_system_prompt``).

    ``style``: ``"{style}:"``. ``demo_or_style``: none for android_control / demo; for demo styles
    none with probability 0.9 (``rng.random() > 0.1``, drawn at evaluation time too); else
    ``"{style}:"``. ``style_and_length``: training ``"{style} {n // 15}:"`` with ``n`` = response
    length + ``int(normal(0, 25))`` (90%) or ``"{style} :"``; inference ``"{style} {65}:"``.
    No prefix for examples without a style.
    """
    kind = cfg.system_prompt_kind
    if kind == "none" or style is None:
        return ""
    style = EVAL_STYLE_ALIASES.get(style, style)
    if kind == "style":
        return style + ":"
    if kind == "demo_or_style":
        if style in NO_PREFIX_STYLES:
            return ""
        if style in DEMO_STYLES and rng.random() > 0.1 and not cfg.debug:
            return ""
        return style + ":"
    # style_and_length
    if for_inference:
        n = None if cfg.default_inference_len is None else str(cfg.default_inference_len)
        return f"{style} {n}:" if n else style + " :"
    if rng.random() > 0.10:
        n = len(messages[-1]) + int(rng.normal(scale=25))
        return f"{style} {n // 15}:"
    return style + " :"


def format_messages(messages: Sequence[str], cfg: FormatterConfig) -> Conversation:
    """Chat template: user turns (even indices) -> ``"User: {m} Assistant:"`` (role formatting); every
    message but the first gets a leading space, the first too with ``always_start_with_space``."""
    out = []
    for ix, message in enumerate(messages):
        if cfg.message_formatting == "role" and ix % 2 == 0:
            message = "User: " + message + " Assistant:"
        if ix != 0 or cfg.always_start_with_space:
            message = " " + message
        out.append(message)
    return out


def format_conversation(
    message,
    *,
    for_inference: bool,
    rng: np.random.RandomState,
    cfg: FormatterConfig,
    image_hw: tuple[int, int] | None = None,
) -> tuple[Conversation, dict]:
    """One conversation: a string, a list of turns, ``{"messages": [...], "style": ...}`` or an example
    dict -> formatted message strings (+ metadata)."""
    metadata: dict[str, Any] = {}
    if isinstance(message, Mapping):
        keys = ("answer_idx", "answers", "answer", "points", "options")
        metadata = {k: message[k] for k in keys if k in message}
    if isinstance(message, str):
        messages = [message]
    elif isinstance(message, (list, tuple)):
        messages = list(message)
    elif "messages" in message:
        messages = list(message["messages"])
    else:
        prompt, response, extra = user_prompt(
            message, for_inference=for_inference, rng=rng, cfg=cfg, image_hw=image_hw
        )
        metadata.update(extra or {})
        messages = [prompt] if for_inference else [prompt, response]
    if not messages or not all(isinstance(m, str) for m in messages):
        raise ValueError(f"a conversation must be a non-empty list of strings, got {messages!r}")

    style = message.get("style") if isinstance(message, Mapping) else None
    prefix = system_prefix(style, for_inference=for_inference, messages=messages, rng=rng, cfg=cfg)
    if prefix:
        messages[0] = prefix + " " + messages[0] if messages[0] else prefix
    return format_messages(messages, cfg), metadata


def format_example(
    example: Mapping[str, Any],
    *,
    for_inference: bool,
    rng: RngLike = None,
    cfg: FormatterConfig | None = None,
    image_hw: tuple[int, int] | None = None,
) -> tuple[Conversation | list[Conversation], dict]:
    """Example dict -> one formatted conversation, or a list of them for ``message_list`` examples."""
    cfg = cfg or FormatterConfig()
    rng = as_rng(rng)
    if "message_list" in example:
        convs = [
            format_conversation(m, for_inference=for_inference, rng=rng, cfg=cfg, image_hw=image_hw)[0]
            for m in example["message_list"]
        ]
        return convs, {}
    if "messages" in example:
        return format_conversation(
            example["messages"], for_inference=for_inference, rng=rng, cfg=cfg, image_hw=image_hw
        )
    return format_conversation(example, for_inference=for_inference, rng=rng, cfg=cfg, image_hw=image_hw)


def no_point_prefix(question: str, rng: np.random.RandomState) -> str:
    """PixMo AskModelAnything / CapQA: questions matching ``how many.*`` (lower-cased, full match) get a
    random "no pointing" request in front (``rng.randint``); others are returned unchanged.
    (The original CapQA loader prefixes the conversation's *first* user turn instead of the matching
    one; pass that text to reproduce it.)"""
    if re.fullmatch("how many.*", question.lower()):
        return NO_POINT_PREFIX[rng.randint(0, len(NO_POINT_PREFIX))] + question
    return question


# ----------------------------------------------------------------------------------------------
# Tokens and loss masks


class TextTokens(NamedTuple):
    tokens: np.ndarray  # int32 [L] token ids of all messages (EOS after assistant messages)
    loss_masks: np.ndarray  # float32 [L] weight on assistant tokens and their EOS, 0 elsewhere
    subsegments: np.ndarray | None  # int32 [L] conversation index + 1 (packed conversations only)


def _is_multi(messages) -> bool:
    return bool(messages) and not isinstance(messages[0], str)


def tokenize_messages(
    tokenizer,
    messages: Conversation | Sequence[Conversation],
    *,
    weight: float | None = None,
    weighting: str | None = None,
) -> TextTokens:
    """Token ids and loss masks of one conversation or several packed ones (each message encoded on
    its own, EOS after assistant turns). Packed: ``subsegments`` = k + 1 for conversation k and, with
    ``weighting="root_subsegments"``, loss masks scaled by ``sqrt(1 / n_conversations)``; a list
    holding a single conversation counts as one conversation."""
    if not messages:
        raise ValueError("no messages to tokenize")
    if _is_multi(messages) and len(messages) == 1:
        messages = messages[0]
    convs = list(messages) if _is_multi(messages) else [messages]
    ids: list[int] = []
    masks: list[float] = []
    subsegments: list[int] = []
    for k, conv in enumerate(convs):
        for ix, message in enumerate(conv):
            has_loss = ix % 2 == 1
            message_ids = tokenizer.encode(message)
            if has_loss:
                message_ids.append(tokenizer.eos_id)
            ids += message_ids
            masks += [float(has_loss)] * len(message_ids)
            subsegments += [k + 1] * len(message_ids)
    tokens = np.asarray(ids, np.int32)
    loss_masks = np.asarray(masks, np.float32)
    if weight is not None:
        loss_masks *= weight
    if len(convs) == 1:
        return TextTokens(tokens, loss_masks, None)
    if weighting == "root_subsegments":
        loss_masks *= math.sqrt(1 / len(convs))
    elif weighting is not None:
        raise ValueError(f"unknown multi_annotation_weighting {weighting!r}")
    return TextTokens(tokens, loss_masks, np.asarray(subsegments, np.int32))


def position_ids_from_subsegments(subsegments: np.ndarray) -> np.ndarray:
    """int64 ``[L]`` positions restarting after the shared prefix for every packed conversation:
    tokens of subsegment ``s`` get ``cumsum(subsegments >= s) - 1``."""
    positions = np.zeros(len(subsegments), np.int64)
    for s in np.unique(subsegments):
        positions = np.where(subsegments == s, np.cumsum(subsegments >= s) - 1, positions)
    return positions
