"""``MolmoProcessor``: images + text -> Molmo model inputs, and batch collation.

One example (``C`` crops, ``L`` tokens; shapes as in the golden files)::

    input_ids        int64   [L]              BOS (= EOS id), image blocks, text; -1 only after collation
    position_ids     int64   [L]
    images           float32 [C, 576, 588]    crop 0 = global view (zero crops for text-only inputs)
    image_masks      float32 [C, 576]
    image_input_idx  int32   [C, 144]         sequence position of each pooled feature, < 0 = unused
    target_tokens    int64   [L]              training / ``process_example`` outputs only
    loss_masks       float32 [L]
    subsegment_ids   int64   [L]              packed conversations only

Image blocks replace ``<|image|>`` placeholders in the prompt, or go before all text when there is
none (the normal case). Text-only inference inputs get no BOS, as the original.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from molmo_jax.preprocess import formatting as fmt
from molmo_jax.preprocess.image import (
    ImageInputs,
    ImagePreprocessConfig,
    ImageSource,
    ImageTokenIds,
    image_to_inputs,
    load_image,
)
from molmo_jax.preprocess.tokenizer import MolmoTokenizer, TokenizerError

TEXT_KEYS = ("input_ids", "target_tokens", "loss_masks", "position_ids", "subsegment_ids")
IMAGE_KEYS = ("images", "image_masks", "image_input_idx")

# Released checkpoints: tokenizer folder and the LLM vocab_size the repo pads the tokenizer to.
PRESETS = {
    "molmo-7b-d": ("Qwen2-7B", 152064),
    "molmo-72b": ("Qwen2-7B", 152064),  # Qwen2-72B shares Qwen2-7B's tokenizer
    "molmo-7b-o": ("allenai_dolma2-tokenizer", 100278),
    "molmoe-1b": ("allenai_OLMoE-1B-7B-0924", None),  # pad_tokenizer: false
}


class SequenceTooLongError(ValueError):
    """An example longer than the sequence budget."""


def _preset_key(name: str) -> str | None:
    """ "allenai/Molmo-7B-D-0924", "Molmo-7B-D", "molmo_7b_d" -> "molmo-7b-d"."""
    key = name.split("/")[-1].lower().replace("_", "-")
    for suffix in ("-0924", "-1024"):
        key = key.removesuffix(suffix)
    return key if key in PRESETS else None


def _load_json(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _configs_from_checkpoint(config: dict, pre: dict) -> tuple[dict, dict]:
    """Image / formatter settings from ``config.json`` (released or repo-style keys) and the HF
    ``preprocessor_config.json``."""
    img: dict[str, Any] = {}
    for key in ("crop_mode", "max_crops", "use_col_tokens", "pad_value"):
        if key in config:
            img[key] = config[key]
    if "overlap_margins" in config:
        img["overlap_margins"] = tuple(config["overlap_margins"])
    if "image_pooling_h" in config:
        img["pooling_h"] = config["image_pooling_h"]
    if "image_pooling_w" in config:
        img["pooling_w"] = config["image_pooling_w"]
    if "image_padding_embed" in config:
        img["image_padding_mask"] = config["image_padding_embed"] is not None
    vb = config.get("vision_backbone") or {}
    if "image_default_input_size" in vb:
        h, w = vb["image_default_input_size"]
        if h != w:
            raise ValueError(f"non-square crops {h}x{w} are not supported")
        img["crop_size"] = h
    if "image_patch_size" in vb:
        img["patch_size"] = vb["image_patch_size"]
    if "image_model_type" in vb:
        img["normalize"] = vb["image_model_type"]
    if vb.get("resize_mode") not in (None, "default"):
        img["resize"] = vb["resize_mode"]

    if "max_crops" in pre:
        img["max_crops"] = pre["max_crops"]
    if "overlap_margins" in pre:
        img["overlap_margins"] = tuple(pre["overlap_margins"])
    if "base_image_input_size" in pre:
        h, w = pre["base_image_input_size"]
        if h != w:
            raise ValueError(f"non-square crops {h}x{w} are not supported")
        img["crop_size"] = h
    if "image_patch_size" in pre:
        img["patch_size"] = pre["image_patch_size"]
    if "image_padding_mask" in pre:
        img["image_padding_mask"] = bool(pre["image_padding_mask"])
    if pre.get("do_normalize") is False:
        img["normalize"] = "none"
    elif "image_mean" in pre and "image_std" in pre:
        img["image_mean"], img["image_std"] = tuple(pre["image_mean"]), tuple(pre["image_std"])

    text = {
        k: config[k]
        for k in (
            "prompt_type",
            "message_formatting",
            "system_prompt_kind",
            "always_start_with_space",
            "default_inference_len",
            "multi_annotation_weighting",
        )
        if k in config
    }
    return img, text


class MolmoProcessor:
    """Tokenizer + image and prompt settings; turns images and text into Molmo model inputs.

    Build it from a checkpoint folder or a released-model name::

        proc = MolmoProcessor.from_pretrained("Molmo-7B-D")            # golden / repo settings
        proc = MolmoProcessor.from_pretrained("ckpt_dir", max_crops=36)
        inputs = proc(images="cat.jpg", text="What animal is this?")
        batch = proc.collate([inputs, other], pad_to_length=1536, max_crops=13)
    """

    def __init__(
        self,
        tokenizer: MolmoTokenizer,
        image_config: ImagePreprocessConfig | None = None,
        format_config: fmt.FormatterConfig | None = None,
        *,
        max_sequence_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_config = image_config or ImagePreprocessConfig()
        self.format_config = format_config or fmt.FormatterConfig()
        self.max_sequence_length = max_sequence_length
        self.image_token_ids = ImageTokenIds(
            tokenizer.image_start_id, tokenizer.image_end_id, tokenizer.image_patch_id, tokenizer.image_col_id
        )

    # Construction -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike,
        *,
        tokenizer: MolmoTokenizer | str | None = None,
        pad_to: int | None = None,
        max_sequence_length: int | None = None,
        **overrides,
    ) -> MolmoProcessor:
        """From a checkpoint folder (``config.json``, optional ``preprocessor_config.json`` and tokenizer
        files) or a released-model name (``"Molmo-7B-D"``, ``"allenai/MolmoE-1B-0924"``, ...).

        ``overrides`` are fields of :class:`ImagePreprocessConfig` or :class:`FormatterConfig`
        (e.g. ``max_crops=36``, ``crop_size=112``). ``tokenizer`` replaces the folder's tokenizer (a
        :class:`MolmoTokenizer` or a tokenizer folder / name); ``pad_to`` the vocabulary padding.
        Without tokenizer files the folder's ``pad_tokenizer`` / ``vocab_size`` decide the padding.
        """
        path = Path(path_or_name)
        img_kw: dict[str, Any] = {}
        text_kw: dict[str, Any] = {}
        if path.is_dir():
            config = _load_json(path / "config.json")
            img_kw, text_kw = _configs_from_checkpoint(config, _load_json(path / "preprocessor_config.json"))
            if pad_to is None and config.get("pad_tokenizer", True):
                pad_to = config.get("vocab_size")
            tok_source = tokenizer if tokenizer is not None else path
        else:
            key = _preset_key(str(path_or_name))
            if key is None:
                raise ValueError(
                    f"{path_or_name!r} is neither a checkpoint folder nor a released model "
                    f"({', '.join(PRESETS)})"
                )
            name, preset_pad = PRESETS[key]
            pad_to = preset_pad if pad_to is None else pad_to
            tok_source = tokenizer if tokenizer is not None else name
        if not isinstance(tok_source, MolmoTokenizer):
            try:
                tok_source = MolmoTokenizer.from_pretrained(tok_source, pad_to=pad_to)
            except TokenizerError as e:
                raise TokenizerError(f"{e} (pass tokenizer=... to MolmoProcessor.from_pretrained)") from None

        img_fields = {f.name for f in dataclasses.fields(ImagePreprocessConfig)}
        text_fields = {f.name for f in dataclasses.fields(fmt.FormatterConfig)}
        for key, value in overrides.items():
            if key in img_fields:
                img_kw[key] = value
            elif key in text_fields:
                text_kw[key] = value
            else:
                raise TypeError(f"unknown MolmoProcessor setting {key!r}")
        image_config = ImagePreprocessConfig(**img_kw)
        if path.is_dir():
            pre = _load_json(path / "preprocessor_config.json")
            derived = {
                "image_token_length_h": image_config.tokens_h,
                "image_token_length_w": image_config.tokens_w,
            }
            for key, value in derived.items():
                if key in pre and pre[key] != value:
                    raise ValueError(
                        f"{path / 'preprocessor_config.json'}: {key}={pre[key]} but the crop "
                        f"and pooling sizes give {value}"
                    )
        return cls(
            tok_source, image_config, fmt.FormatterConfig(**text_kw), max_sequence_length=max_sequence_length
        )

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the tokenizer files and a ``preprocessor_config.json`` with the crop settings, so
        that ``from_pretrained(folder)`` gives back this processor's image layout (e.g. a model
        trained with fewer crops than the released ones)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        c = self.image_config
        pre = _load_json(folder / "preprocessor_config.json")
        pre.update(
            max_crops=c.max_crops,
            overlap_margins=list(c.overlap_margins),
            base_image_input_size=[c.crop_size, c.crop_size],
            image_patch_size=c.patch_size,
            image_token_length_h=c.tokens_h,
            image_token_length_w=c.tokens_w,
            image_padding_mask=c.image_padding_mask,
        )
        (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
        return folder

    # Public calls -------------------------------------------------------------------------------
    def __call__(
        self,
        images: ImageSource | Sequence[ImageSource] | None = None,
        text: str | None = None,
        *,
        style: str | None = "demo",
        messages: Sequence | None = None,
        weight: float | None = None,
        rng: fmt.RngLike = None,
    ) -> dict[str, np.ndarray]:
        """Model inputs for one example.

        Inference: ``text`` is the user prompt (may contain ``<|image|>``), formatted as
        ``" User: {text} Assistant:"`` after the ``style`` prefix rule (``"demo"``: none). Returns
        ``input_ids, position_ids, images, image_masks, image_input_idx``.

        Training: ``messages`` is one conversation (user, assistant, ...) or a list of conversations
        about the same image (packed); the style prefix rule and the chat template are applied. Also
        returns ``target_tokens``, ``loss_masks`` and, when packed, ``subsegment_ids``.
        """
        if (text is None) == (messages is None):
            raise ValueError("give exactly one of text= (inference prompt) or messages= (training)")
        rng = fmt.as_rng(rng)
        if text is not None:
            conv, _ = fmt.format_conversation(
                {"prompt": text, "style": style}, for_inference=True, rng=rng, cfg=self.format_config
            )
            out = self.encode(images, conv)
            return {k: v for k, v in out.items() if k not in ("target_tokens", "loss_masks")}
        if not messages:
            raise ValueError("messages is empty")
        multi = not isinstance(messages[0], str)
        convs = [
            fmt.format_conversation(
                {"messages": m, "style": style}, for_inference=False, rng=rng, cfg=self.format_config
            )[0]
            for m in (messages if multi else [messages])
        ]
        return self.encode(images, convs if multi else convs[0], weight=weight)

    def process_example(
        self,
        example: Mapping[str, Any],
        *,
        for_inference: bool = False,
        shuffle_conversations: bool = False,
        rng: fmt.RngLike = None,
    ) -> dict[str, Any]:
        """A dataset example dict (``image`` + prompt/question/answer/points/message_list, ``style``,
        optional ``weight``) -> model inputs, as the original ``Preprocessor``: image loading, prompt
        formatting with the example's rng, optional shuffling of packed conversations
        (``rng.shuffle``, training), then tokens and crops. Returns all keys plus ``metadata``."""
        rng = fmt.as_rng(rng)
        image = None
        if example.get("image") is not None:
            image = load_image(example["image"], max_pixels=self.image_config.max_image_pixels)
        convs, metadata = fmt.format_example(
            example,
            for_inference=for_inference,
            rng=rng,
            cfg=self.format_config,
            image_hw=None if image is None else image.shape[:2],
        )
        if shuffle_conversations and convs and not isinstance(convs[0], str):
            rng.shuffle(convs)
        out = self.encode(image, convs, weight=example.get("weight"))
        metadata = dict(example.get("metadata") or {}, **metadata)
        if image is not None:
            metadata["image_size"] = (image.shape[1], image.shape[0])
        out["metadata"] = metadata
        return out

    def decode(self, ids) -> str:
        """Generated ids -> text (drops a leading BOS, cuts at the first EOS)."""
        return self.tokenizer.decode(ids)

    # Assembly -----------------------------------------------------------------------------------
    def encode(
        self,
        images: ImageSource | Sequence[ImageSource] | None,
        conversations: fmt.Conversation | Sequence[fmt.Conversation],
        *,
        weight: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Formatted conversation(s) (message strings, e.g. from :func:`formatting.format_example`) +
        images -> all model-input arrays (the original ``MultiModalPreprocessor.__call__``). Image
        preprocessing is deterministic (no training-time resize augmentation)."""
        cfg = self.image_config
        text = fmt.tokenize_messages(
            self.tokenizer,
            conversations,
            weight=weight,
            weighting=self.format_config.multi_annotation_weighting,
        )
        tokens, loss_masks, subsegments = text
        image_list = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        placeholders = np.nonzero(tokens == self.tokenizer.image_placeholder_id)[0]
        if placeholders.size and placeholders.size != len(image_list):
            raise ValueError(
                f"the prompt has {placeholders.size} <|image|> placeholder(s) but "
                f"{len(image_list)} image(s) were given"
            )
        ends_with_eos = len(tokens) > 0 and tokens[-1] == self.tokenizer.eos_id
        if len(tokens) and not ends_with_eos and loss_masks[-1]:
            raise ValueError("the last message has a loss but no EOS")

        if not image_list:
            return self._text_only(tokens, loss_masks, subsegments, ends_with_eos)

        arrays = [load_image(im, max_pixels=cfg.max_image_pixels) for im in image_list]
        inputs: list[ImageInputs] = [image_to_inputs(a, cfg, self.image_token_ids) for a in arrays]

        # Splice image blocks into the text: at the placeholders, else all at the start.
        seq, masks, segs, idx = [], [], [], []
        cut_points = list(placeholders) if placeholders.size else [0] * len(inputs)
        prev, length = 0, 0
        for cut, inp in zip(cut_points, inputs):
            seq.append(tokens[prev:cut])
            masks.append(loss_masks[prev:cut])
            if subsegments is not None:
                segs.append(subsegments[prev:cut])
                segs.append(
                    np.full(len(inp.tokens), fmt.IMAGE_SUBSEGMENT if not placeholders.size else cut, np.int32)
                )
            length += cut - prev
            idx.append(_shift_patch_index(inp.patch_index, length))
            seq.append(inp.tokens)
            masks.append(np.zeros(len(inp.tokens), np.float32))
            length += len(inp.tokens)
            prev = cut + 1 if placeholders.size else cut
        seq.append(tokens[prev:])
        masks.append(loss_masks[prev:])
        if subsegments is not None:
            segs.append(subsegments[prev:])

        target = np.concatenate(seq).astype(np.int64)
        loss = np.concatenate(masks).astype(np.float32)
        input_ids = np.concatenate([[self.tokenizer.bos_id], target]).astype(np.int64)
        if ends_with_eos:
            input_ids = input_ids[:-1]
        else:  # inference: targets unused, padded to the input length as the original
            loss = np.concatenate([loss, np.float32([-1])])
            target = np.concatenate([target, [-1]])
        image_input_idx = np.concatenate(idx)
        image_input_idx = np.where(image_input_idx < 0, image_input_idx, image_input_idx + 1).astype(np.int32)

        def join(arrays):  # no copy for the usual single image
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

        out = {
            "input_ids": input_ids,
            "target_tokens": target,
            "loss_masks": loss,
            "images": join([i.crops for i in inputs]),
            "image_input_idx": image_input_idx,
        }
        if cfg.image_padding_mask:
            out["image_masks"] = join([i.image_masks for i in inputs])
        self._add_positions(out, np.concatenate(segs) if subsegments is not None else None, ends_with_eos)
        self._check_length(out)
        return out

    def _text_only(self, tokens, loss_masks, subsegments, ends_with_eos) -> dict[str, np.ndarray]:
        """No image: inference inputs are the text tokens without BOS (as the original). Training inputs
        are BOS + targets[:-1]: the original returns inputs == targets here (its shifted copy is
        computed but unused), which cannot train; we use the shifted copy."""
        cfg = self.image_config
        target = tokens.astype(np.int64)
        input_ids = (
            np.concatenate([[self.tokenizer.bos_id], target[:-1]]).astype(np.int64)
            if ends_with_eos
            else target.copy()
        )
        out = {
            "input_ids": input_ids,
            "target_tokens": target,
            "loss_masks": loss_masks.astype(np.float32),
            "images": np.zeros((0, cfg.patches_per_crop, cfg.patch_dim), np.float32),
            "image_input_idx": np.zeros((0, cfg.tokens_per_crop), np.int32),
        }
        if cfg.image_padding_mask:
            out["image_masks"] = np.zeros((0, cfg.patches_per_crop), np.float32)
        if subsegments is not None:
            if ends_with_eos:
                subsegments = np.concatenate([subsegments[:1], subsegments[:-1]])
            out["subsegment_ids"] = subsegments.astype(np.int64)
            out["position_ids"] = fmt.position_ids_from_subsegments(subsegments)
        else:
            out["position_ids"] = np.arange(len(input_ids), dtype=np.int64)
        self._check_length(out)
        return out

    @staticmethod
    def _add_positions(out: dict, segs: np.ndarray | None, ends_with_eos: bool) -> None:
        if segs is None:
            out["position_ids"] = np.arange(len(out["input_ids"]), dtype=np.int64)
            return
        segs = np.concatenate([segs[:1], segs])  # BOS takes the id of the first token
        if ends_with_eos:
            segs = segs[:-1]
        out["subsegment_ids"] = segs.astype(np.int64)
        out["position_ids"] = fmt.position_ids_from_subsegments(segs)

    def _check_length(self, out: dict) -> None:
        n = len(out["input_ids"])
        if self.max_sequence_length is not None and n > self.max_sequence_length:
            raise SequenceTooLongError(
                f"example has {n} tokens ({int((out['image_input_idx'] >= 0).sum())} image features), more "
                f"than max_sequence_length={self.max_sequence_length}; shorten the text or lower max_crops"
            )

    # Batching -----------------------------------------------------------------------------------
    def collate(
        self,
        examples: Sequence[Mapping[str, np.ndarray]],
        *,
        pad_to_length: int | None = None,
        max_crops: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Stack examples into a batch, right-padding every array with -1 (the original ``MMCollator``).

        Text arrays -> ``[B, pad_to_length or longest]``; image arrays ->
        ``[B, max_crops or most crops, ...]`` (padded crops are all -1). If any example has
        ``subsegment_ids`` the others get ones. Raises :class:`SequenceTooLongError` instead of
        truncating an example that does not fit.
        """
        return collate(examples, pad_to_length=pad_to_length, max_crops=max_crops)


def _shift_patch_index(patch_index: np.ndarray, offset: int) -> np.ndarray:
    """Move an image's patch index to the image's position in the sequence. Like the original, the
    offset is added to the -100 margin cells too (an image at text position 7 gives -93); a margin
    cell that would become >= 0 (offset >= 100, where the original points it at a real token)
    stays -100."""
    shifted = patch_index + offset
    return np.where((patch_index < 0) & (shifted >= 0), patch_index, shifted).astype(np.int32)


def collate(
    examples: Sequence[Mapping[str, np.ndarray]],
    *,
    pad_to_length: int | None = None,
    max_crops: int | None = None,
) -> dict[str, np.ndarray]:
    """Batch of examples -> ``[B, ...]`` arrays padded with -1 (see :meth:`MolmoProcessor.collate`)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    lengths = [len(ex["input_ids"]) for ex in examples]
    length = max(lengths) if pad_to_length is None else pad_to_length
    if max(lengths) > length:
        i = int(np.argmax(lengths))
        raise SequenceTooLongError(f"example {i} has {lengths[i]} tokens, more than pad_to_length={length}")
    out: dict[str, np.ndarray] = {}
    has_segments = any("subsegment_ids" in ex for ex in examples)
    for key in TEXT_KEYS:
        wanted = has_segments if key == "subsegment_ids" else any(key in ex for ex in examples)
        if not wanted:
            continue
        dtype = np.float32 if key == "loss_masks" else np.int64
        arr = np.full((len(examples), length), -1, dtype)
        for b, ex in enumerate(examples):
            value = ex.get(key)
            if value is None and key == "subsegment_ids":
                value = np.ones(len(ex["input_ids"]), np.int64)
            if value is None:
                raise ValueError(f"example {b} has no {key!r} while others do")
            if len(value) != lengths[b]:
                raise ValueError(
                    f"example {b}: {key!r} has length {len(value)} but input_ids has {lengths[b]}"
                )
            arr[b, : len(value)] = value
        out[key] = arr
    crops = [len(ex["images"]) if "images" in ex else 0 for ex in examples]
    n_crops = max(crops) if max_crops is None else max_crops
    if max(crops) > n_crops:
        i = int(np.argmax(crops))
        raise ValueError(f"example {i} has {crops[i]} crops, more than max_crops={n_crops}")
    for key in IMAGE_KEYS:
        present = [ex[key] for ex in examples if key in ex]
        if not present:
            continue
        ref = present[0]
        arr = np.full((len(examples), n_crops) + ref.shape[1:], -1, ref.dtype)
        for b, ex in enumerate(examples):
            if key in ex:
                arr[b, : len(ex[key])] = ex[key]
        out[key] = arr
    return out
