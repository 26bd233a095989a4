"""The Molmo paper's evaluation metrics as pure functions (parity with ``olmo/eval/vqa.py`` and
``olmo/eval/evaluators.py`` of the official repository, MOLMO_SPEC section 10, golden README section 8).

Every function scores one example; :func:`mean_metric`, :func:`aggregate_scores` and
:func:`count_aggregate` average per-example values like the original evaluators do. Quirks of the
original are reproduced on purpose (each is noted where it happens). Where the original raises on an
input, the docstring says whether we raise the same exception or return a documented value instead.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from molmo_jax.preprocess.pointing import extract_points

try:  # C implementation (the one the original uses); a pure-Python fallback keeps the module importable
    import editdistance as _editdistance
except ImportError:  # pragma: no cover - exercised only where editdistance is not installed
    _editdistance = None


# ----------------------------------------------------------------------------------------------
# Levenshtein distance


def _levenshtein_py(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of code points)."""
    if _editdistance is not None:
        return int(_editdistance.eval(a, b))
    return _levenshtein_py(a, b)


# ----------------------------------------------------------------------------------------------
# VQA answer normalisation and VQA score

# The standard VQA contraction table as the original spells it, odd entries included ("somebody'd" ->
# "somebodyd" points the wrong way; the capitalised keys never match because words are lower-cased).
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_VQA_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The original's pattern "(?!<=\d)(\.)(?!\d)" has a malformed look-behind that is always satisfied, so it
# is "a period not followed by a digit"; it also passes re.UNICODE (= 32) as the count argument.
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = int(re.UNICODE)


def _normalize_punctuation(text: str) -> str:
    # Decisions look at the input text, replacements accumulate in the output.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        next_to_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if (delete_all or next_to_space) else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def _normalize_words(text: str) -> str:
    words = [_VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def preprocess_answer(answer: str) -> str:
    """Standard VQA answer normalisation (original ``preprocess_answer``).

    Newlines/tabs -> spaces, lower-case, strip; punctuation of the VQA list is deleted (when it touches
    a space, or the text has a digit-comma-digit) or replaced by a space; periods not followed by a
    digit are removed (at most 32); number words ``none``..``ten`` -> digits, articles dropped,
    contractions restored. (The original memoises results; that has no observable effect.)
    """
    text = answer.replace("\n", " ").replace("\t", " ").lower().strip()
    return _normalize_words(_normalize_punctuation(text))


def vqa_score(target: str | Sequence[str], prediction: str) -> float:
    """VQA accuracy ``min(#matching answers / 3, 1)`` after normalising both sides.

    A single string target is compared with ``==`` against the normalised prediction and is itself
    *not* normalised (as in the original). Always a float (the original returns the int 1 when the
    match count exceeds 3).
    """
    pred = preprocess_answer(prediction)
    if isinstance(target, str):
        return float(pred == target)
    counts = Counter(preprocess_answer(t) for t in target)
    return float(min(counts[pred] / 3.0, 1.0))


# ----------------------------------------------------------------------------------------------
# ANLS, relaxed correctness, exact match


def anls_metric(target: str, prediction: str, theta: float = 0.5) -> float:
    """ANLS for one reference: ``1 - d`` if ``d < theta`` else 0, with ``d`` the case-insensitive
    Levenshtein distance over the longer length.

    Differs from the original for two empty strings: the original raises ``ZeroDivisionError``; this
    returns 1.0 (identical strings, distance 0), so an empty answer cannot abort an evaluation.
    """
    longest = max(len(target), len(prediction))
    if longest == 0:
        return 1.0
    normalized = levenshtein(target.lower(), prediction.lower()) / longest
    return 1.0 - normalized if normalized < theta else 0.0


def _relaxed_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed accuracy: within 5% of a non-zero numeric target, else case-insensitive equality.

    Numbers go through Python ``float()`` (spaces, ``1e3``, ``nan``, ``inf`` accepted, ``1,000`` not); a
    trailing ``%`` divides by 100. A target of 0 (or non-numeric) falls back to string equality, so
    ``"0"`` vs ``"0.0"`` is False; ``nan``/``inf`` targets never match numerically.
    """
    pred_value = _relaxed_float(prediction)
    target_value = _relaxed_float(target)
    if pred_value is not None and target_value:  # NaN is truthy, 0.0 is not (as in the original)
        return abs(pred_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


def _as_answer_list(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """VqaEval ``em``: the lower-cased prediction equals one of the lower-cased answers."""
    return prediction.lower() in [a.lower() for a in _as_answer_list(answers)]


# ----------------------------------------------------------------------------------------------
# VqaEval prediction clean-up and per-example scoring


def postprocess_prediction(text: str) -> str:
    """The clean-up VqaEval applies to a decoded prediction before every metric.

    Strip; if ``"Answer:"`` occurs, keep the text between its first and second occurrence (stripped,
    inner whitespace kept); elif there is a newline, whitespace-normalise every line and keep the most
    frequent one (first among ties, empty lines count); else collapse whitespace runs to one space.
    """
    text = text.strip()
    if "Answer:" in text:
        return text.split("Answer:")[1].strip()
    if "\n" in text:
        lines = [" ".join(line.split()) for line in text.split("\n")]
        counts = Counter(lines)
        top = max(counts.values())
        return next(line for line in lines if counts[line] == top)
    return " ".join(text.split())


VQA_EVAL_METRICS = ("vqa_score", "ansl", "relaxed_correctness", "em")


def vqa_eval_score(metric: str, raw_prediction: str, answers: str | Sequence[str]) -> float | bool:
    """One VqaEval per-example score: post-process the prediction, then apply ``metric``.

    ``metric`` is one of :data:`VQA_EVAL_METRICS` (``"anls"`` is accepted as an alias of the original's
    ``"ansl"``); ANLS and relaxed correctness take the max over the answers. A string ``answers`` is a
    single answer.
    """
    pred = postprocess_prediction(raw_prediction)
    refs = _as_answer_list(answers)
    if metric == "vqa_score":
        return vqa_score(refs, pred)
    if metric in ("ansl", "anls"):
        return max(anls_metric(ref, pred) for ref in refs)
    if metric == "relaxed_correctness":
        return max(relaxed_correctness(ref, pred) for ref in refs)
    if metric == "em":
        return exact_match(pred, refs)
    raise ValueError(f"unknown VqaEval metric {metric!r}; expected one of {VQA_EVAL_METRICS}")


# ----------------------------------------------------------------------------------------------
# Multiple choice


def select_mc_option(prediction: str, options: Sequence[str]) -> int:
    """Index of the option a free-form prediction selects (original ``select_mc_option``).

    Case-insensitive and stripped: an equal option wins; else the only option containing the
    prediction; else the option with the smallest edit distance (first on ties; an empty prediction is
    contained in every option, so it falls through to the distance rule). Options that coincide after
    lower-casing/stripping raise ``AssertionError``, as in the original (a data error, not a model one).
    """
    pred = prediction.lower().strip()
    opts = [o.lower().strip() for o in options]
    if len(set(opts)) != len(opts):
        raise AssertionError(f"duplicate options after lower-casing: {list(options)}")
    if pred in opts:
        return opts.index(pred)
    containing = [i for i, o in enumerate(opts) if pred in o]
    if len(containing) == 1:
        return containing[0]
    distances = [levenshtein(o, pred) for o in opts]
    return int(np.argmin(distances))


def mc_score(raw_prediction: str, option_names: Sequence[str], answer_idx: int) -> bool:
    """VqaEval ``mc``: the post-processed prediction selects the correct option."""
    return select_mc_option(postprocess_prediction(raw_prediction), option_names) == answer_idx


# ----------------------------------------------------------------------------------------------
# Counting (PointCountEval)

COUNT_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
_A_TOTAL_OF = re.compile(r".*a total of ([0-9]+).*")  # re.match: "." does not cross newlines
# The original writes ".*\bnone\b.*" without a raw string: "\b" is a backspace, so "none" / "There are
# none." are *not* parsed as 0. Reproduced literally.
_NONE_WITH_BACKSPACES = re.compile(".*\x08none\x08.*")


def _parse_int(text: str) -> int | None:
    try:
        return int(text)  # accepts "+3", "-2", full-width digits; not "3.0" or "12,"
    except ValueError:
        return None


def parse_count(prediction: str) -> int | None:
    """The count PointCountEval reads from a prediction, or None when none can be parsed.

    Lower-case, strip trailing periods; the last word through ``int()``, else the last word as a number
    word ``zero``..``twenty``; else ``a total of <digits>`` (first line only, last occurrence).
    """
    pred = prediction.strip().lower().rstrip(".").strip()
    words = pred.split()
    if words:
        value = _parse_int(words[-1])
        if value is None:
            value = COUNT_WORDS.get(words[-1])
        if value is not None:
            return value
    match = _A_TOTAL_OF.match(pred)
    if match:
        return _parse_int(match.group(1))  # None only for absurdly long digit runs (the original raises)
    if _NONE_WITH_BACKSPACES.match(pred):
        return 0
    return None


def count_scores(prediction: str, gt_count: int) -> dict[str, bool]:
    """Per-example PointCountEval values: ``correct`` (parsed == GT), ``close`` (within 1), ``valid``.

    Booleans; the original stores the int 0 for ``correct``/``close`` when nothing was parsed (same
    value when averaged).
    """
    parsed = parse_count(prediction)
    if parsed is None:
        return {"correct": False, "close": False, "valid": False}
    return {"correct": parsed == gt_count, "close": abs(gt_count - parsed) <= 1, "valid": True}


# ----------------------------------------------------------------------------------------------
# Pointing (PointingEval)

_NUM = r"\d+(?:\.\d+)?"
_SIGNED_NUM = rf"-?{_NUM}"
_ALT_AND_BODY = r'alt="[\s\S]*?">[\s\S]*?'
# The answer grammars is_valid_format accepts; the whole stripped text must match one of them. Anything
# may sit between the opening tag and the closing tag at the very end, so several tags in a row pass.
_VALID_POINT_FORMATS = (
    rf"(?:\(\s*{_SIGNED_NUM}\s*,\s*{_SIGNED_NUM}\s*\)\n?)+",  # "(x, y)" lines (signs allowed here only)
    rf'<point\s+x="\s*{_NUM}"\s+y="\s*{_NUM}"\s+{_ALT_AND_BODY}</point>',
    rf'<points\s+(?:x\d+="\s*{_NUM}"\s+y\d+="\s*{_NUM}"\s+)+{_ALT_AND_BODY}</points>',
    rf"<point\s+p=\s*\d{{3}}\s*,\s*\d{{3}}\s+{_ALT_AND_BODY}</point>",
    rf"<points\s+(?:\d+=\s*\d{{3}}\s*,\s*\d{{3}}\s+)+{_ALT_AND_BODY}</points>",
)
_VALID_POINT_FORMAT_RE = re.compile("|".join(f"(?:{p})" for p in _VALID_POINT_FORMATS))


def is_valid_format(text: str) -> bool:
    """Whether the whole (stripped) answer is in one of the point grammars PointingEval accepts."""
    return _VALID_POINT_FORMAT_RE.fullmatch(text.strip()) is not None


def point_in_mask(point: Sequence[float], mask: np.ndarray) -> bool:
    """The point (x, y), rounded with Python ``round`` (half to even), lies on a True mask pixel."""
    height, width = mask.shape
    x, y = int(round(point[0])), int(round(point[1]))
    if not (0 <= x < width and 0 <= y < height):
        return False
    return bool(mask[y, x])


def masks_from_rects(
    rects_per_object: Sequence[Sequence[Sequence[int]]], width: int, height: int
) -> list[np.ndarray]:
    """Boolean masks [height, width], one per object, each the union of ``[x0, y0, x1, y1]`` rectangles
    (half-open pixel ranges)."""
    masks = []
    for rects in rects_per_object:
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in rects:
            mask[y0:y1, x0:x1] = True
        masks.append(mask)
    return masks


def f1_score(precision: float, recall: float, epsilon: float = 1e-10) -> float:
    """``2pr / (p + r + eps)``, 0 when p or r is 0 (a perfect answer gives 0.99999999995)."""
    if precision == 0 or recall == 0:
        return 0.0
    return 2 * (precision * recall) / (precision + recall + epsilon)


def pointing_scores(
    prediction: str,
    gt_points: Sequence[Sequence[float]] | np.ndarray,
    masks: Sequence[np.ndarray],
    image_size: tuple[int, int],
) -> dict[str, float]:
    """Per-example PointingEval precision / recall / F1.

    ``gt_points`` are pixels [N, 2], ``masks`` one boolean [H, W] mask per GT point, ``image_size`` =
    (width, height). No GT points: all 1.0 if no point was predicted, else 0.0. Otherwise 0.0 unless
    :func:`is_valid_format`; else predictions and GT points are matched by the Hungarian algorithm on
    Euclidean distance and a matched pair counts when the prediction lies in that GT's mask.

    Differs from the original in one case: a valid-format answer from which no point can be extracted
    (all coordinates above 100, or tuples with two decimals) makes the original raise ``ValueError``
    (scipy ``cdist`` on an empty array); here it scores 0.0 (nothing correct was predicted).
    ``len(masks) != len(gt_points)`` raises ``ValueError`` (a data error).
    """
    pred_text = prediction.strip()
    width, height = image_size
    preds = extract_points(pred_text, width, height)
    if len(gt_points) == 0:
        value = float(len(preds) == 0)
        return {"precision": value, "recall": value, "f1": value}
    if len(masks) != len(gt_points):
        raise ValueError(f"{len(gt_points)} GT points but {len(masks)} masks")
    if not is_valid_format(pred_text) or not preds:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    pred_arr = np.asarray(preds, dtype=np.float64)
    rows, cols = linear_sum_assignment(cdist(pred_arr, np.asarray(gt_points, dtype=np.float64)))
    hits = sum(point_in_mask(pred_arr[i], masks[j]) for i, j in zip(rows, cols))
    precision = hits / len(pred_arr)
    recall = hits / len(masks)
    return {"precision": precision, "recall": recall, "f1": f1_score(precision, recall)}


# ----------------------------------------------------------------------------------------------
# Clock reading (ClockEval)

CLOCK_METRICS = (
    "overall_close",
    "overall_exact",
    "correctly_declines_to_answer",
    "all_correct",
    "all_close",
    "hour_correct",
    "minute_correct",
    "second_correct",
    "minute_close",
    "second_close",
)


def _clock_field(parts: list[str], index: int, word: int) -> int | None:
    """int() of word ``word`` of the ``index``-th ':'-separated part; None when absent or not an int."""
    try:
        return int(parts[index].split()[word])
    except (ValueError, IndexError):
        return None


def clock_scores(
    prediction: str, hour: int, minute: int, second: int, *, is_test: bool = False
) -> dict[str, bool]:
    """Per-example ClockEval entries (only the keys the original sets for this example).

    GT ``second == -1``: no seconds; hour, minute and second all -1: unanswerable, scored only by
    ``correctly_declines_to_answer`` (no ':' in the prediction). Hour = last word before the first
    ':' (+12 if "PM" occurs, non-test mode), minute / second = first word after the next ':'. Closeness
    is within 3 (non-test) or 1 (test mode, which also maps GT hour 12 and predicted hours >= 12 down by
    12, minute 60 to 0, accepts a 59-minute wrap and, without GT seconds, a total 719-minute difference).

    Values are booleans (the original stores the int 0 for some parse failures; same when averaged).
    Differs from the original in one case: in test mode with GT second -1, an unparsable hour or minute
    makes the original raise ``UnboundLocalError`` (or, inside a batch, silently reuse the previous
    example's parsed hour/minute); here ``all_close`` / ``overall_close`` are False.
    """
    pred = prediction.strip()
    if is_test and hour == 12:
        hour = 0
    if is_test and minute == 60:
        minute = 0
    if not (hour > -1 or minute > -1 or second > -1):
        declines = ":" not in pred
        return dict.fromkeys(("correctly_declines_to_answer", "overall_close", "overall_exact"), declines)

    threshold = 1 if is_test else 3
    parts = pred.split(":")
    pred_hour = _clock_field(parts, 0, -1)
    if pred_hour is not None and "PM" in pred and not is_test:
        pred_hour += 12
    if pred_hour is not None and is_test and pred_hour >= 12:
        pred_hour -= 12
    hour_correct = pred_hour is not None and (pred_hour == hour or (hour == 0 and pred_hour == 12))

    pred_minute = _clock_field(parts, 1, 0)
    if pred_minute is not None and is_test and pred_minute == 60:
        pred_minute = 0
    minute_correct = pred_minute is not None and pred_minute == minute
    minute_close = pred_minute is not None and (
        abs(pred_minute - minute) <= threshold or (is_test and abs(pred_minute - minute) == 59)
    )
    scores = {"hour_correct": hour_correct, "minute_correct": minute_correct, "minute_close": minute_close}

    if second != -1:
        pred_second = _clock_field(parts, 2, 0)
        second_correct = pred_second is not None and pred_second == second
        second_close = pred_second is not None and abs(pred_second - second) <= threshold
        scores.update(second_correct=second_correct, second_close=second_close)
        all_correct = hour_correct and minute_correct and second_correct
        all_close = hour_correct and minute_close and second_close
    else:
        all_correct = hour_correct and minute_correct
        all_close = hour_correct and minute_close
        if is_test and not all_close and pred_hour is not None and pred_minute is not None:
            all_close = abs(hour * 60 + minute - (pred_hour * 60 + pred_minute)) == 719  # 12-hour wrap
    scores.update(all_correct=all_correct, all_close=all_close)
    scores.update(overall_close=all_close, overall_exact=all_correct)  # aliases kept by the original
    return scores


def clock_minutes_off(prediction: str, hour: int, minute: int, second: int = -1) -> float | None:
    """How far the predicted time is from the true one, in minutes on a 12-hour dial (0 to 360), or
    None when no ``H:MM`` time can be read. Seconds count when both sides have them. Not part of
    the original's ClockEval: the demo's "time within 2 minutes" score."""
    parts = prediction.strip().split(":")
    pred_hour, pred_minute = _clock_field(parts, 0, -1), _clock_field(parts, 1, 0)
    if pred_hour is None or pred_minute is None or hour < 0 or minute < 0:
        return None
    pred_second = _clock_field(parts, 2, 0) if second >= 0 else None
    true = (hour % 12) * 60 + minute + (second / 60 if pred_second is not None else 0)
    pred = (pred_hour % 12) * 60 + pred_minute + (pred_second / 60 if pred_second is not None else 0)
    diff = abs(pred - true) % 720
    return min(diff, 720 - diff)


# ----------------------------------------------------------------------------------------------
# Aggregation


def mean_metric(values: Iterable[float | bool], *, float32: bool = True) -> float:
    """Mean of per-example values (booleans count as 0/1); NaN for no values.

    ``float32=True`` reproduces the numbers the original reports (torchmetrics ``MeanMetric`` fed with
    ``np.mean(v)`` and weight ``len(v)`` in float32: ``float32(float32(mean) * n) / n``);
    ``float32=False`` is the plain float64 mean.
    """
    vals = np.asarray([float(v) for v in values], dtype=np.float64)
    if vals.size == 0:
        return math.nan
    mean = float(np.mean(vals))
    if not float32:
        return mean
    n = np.float32(vals.size)
    return float(np.float32(np.float32(mean) * n) / n)


def aggregate_scores(
    per_example: Sequence[Mapping[str, float | bool]], *, float32: bool = True
) -> dict[str, float]:
    """Mean of every key over the examples that have it (ClockEval leaves some keys unset)."""
    keys: dict[str, None] = {}
    for scores in per_example:
        keys.update(dict.fromkeys(scores))
    return {k: mean_metric((s[k] for s in per_example if k in s), float32=float32) for k in keys}


def count_aggregate(
    per_example: Sequence[Mapping[str, float | bool]], gt_counts: Sequence[int], *, float32: bool = True
) -> dict[str, float]:
    """PointCountEval's output: means of ``close`` / ``valid`` / ``correct`` and ``correct_<k>``, the
    accuracy over the examples with GT count k, for every GT count in increasing order."""
    if len(per_example) != len(gt_counts):
        raise ValueError(f"{len(per_example)} score dicts but {len(gt_counts)} GT counts")
    keys = ("close", "valid", "correct")
    out = {k: mean_metric([s[k] for s in per_example], float32=float32) for k in keys}
    for k in sorted({int(g) for g in gt_counts}):
        correct = [s["correct"] for s, g in zip(per_example, gt_counts) if int(g) == k]
        out[f"correct_{k}"] = mean_metric(correct, float32=float32)
    return out


# ----------------------------------------------------------------------------------------------
# Caption recall (synthetic scenes; not one of the original's evaluators)

# Count words of a caption: the counting table plus the articles.
_NUMBER_WORDS = {"a": 1, "an": 1, **COUNT_WORDS}


def caption_objects(text: str, colours: Sequence[str], kinds: Sequence[str]) -> Counter:
    """Objects a caption mentions, by (colour, shape): "two small blue stars" counts 2 (blue, star);
    a mention without a count word counts 1. Shapes named without a colour are not counted."""
    colour_re = "|".join(re.escape(c) for c in sorted(colours, key=len, reverse=True))
    kind_re = "|".join(re.escape(k) for k in sorted(kinds, key=len, reverse=True))
    pattern = re.compile(
        rf"(?:\b(\d+|{'|'.join(_NUMBER_WORDS)})\s+)?(?:[a-z]+\s+)?\b({colour_re})\s+({kind_re})(?:es|s)?\b",
        re.IGNORECASE,
    )
    found: Counter = Counter()
    for count, colour, kind in pattern.findall(text or ""):
        n = int(count) if count.isdigit() else _NUMBER_WORDS.get(count.lower(), 1)
        found[(colour.lower(), kind.lower())] += n
    return found


def caption_recall(prediction: str, reference: str, colours: Sequence[str], kinds: Sequence[str]) -> float:
    """Fraction of the reference caption's objects whose colour and shape the prediction mentions.

    A reference without coloured objects gives 1.0 (nothing to recall)."""
    ref = caption_objects(reference, colours, kinds)
    total = sum(ref.values())
    if total == 0:
        return 1.0
    mentioned = set(caption_objects(prediction, colours, kinds))
    return sum(n for pair, n in ref.items() if pair in mentioned) / total
