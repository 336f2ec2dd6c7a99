"""Typed run configuration: dataclasses, named JSON presets, strict loading and dotted overrides.

A run is described by one :class:`RunConfig` (model + data + train + eval). Named presets live in
``pgseg_core/presets/<name>.json``; a preset only lists the keys that differ from the dataclass
defaults. Unknown keys are rejected with a "did you mean" suggestion, and values are coerced to the
field's annotated type, so ``--train.lr 3e-4`` on the command line is a float, not a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


class _Validated:
    """Mixin of the config dataclasses: every construction (``from_dict``, overrides, ``dataclasses.replace``,
    direct) checks the numeric ranges of :data:`RANGES` through :meth:`validate`."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check this section's numeric fields against :data:`RANGES`.

        Raises:
            ConfigError: ``SECTION.KEY must be >= 0, got -5`` for the first value out of range.
        """
        check_ranges(self, _SECTIONS[type(self).__name__])


@dataclass
class VisionConfig(_Validated):
    """GroupViT image encoder (docs/METHOD.md §1.1-1.3)."""

    stem: Literal["patch", "efficientnet_lite0"] = (
        "patch"  # patch = Conv2d(16, 16) + LN; efficientnet_lite0 = demo hybrid
    )
    stem_frozen: bool = True  # hybrid stem only: keep the package-shipped ImageNet weights fixed
    img_size: int = (
        224  # training resolution, pixels; sets the learned pos-embed grid (img_size / patch_size)
    )
    patch_size: int = 16  # pixels per token side (the hybrid stem is fixed at stride 16)
    in_chans: int = 3
    embed_dim: int = 384  # token width C
    depths: list[int] = field(default_factory=lambda: [6, 3, 3])  # transformer blocks per stage
    num_heads: list[int] = field(default_factory=lambda: [6, 6, 6])
    num_group_tokens: list[int] = field(
        default_factory=lambda: [64, 8, 0]
    )  # group tokens entering each stage
    num_output_groups: list[int] = field(
        default_factory=lambda: [64, 8]
    )  # segments out of each grouping block
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1  # linear over all blocks; grouping blocks have none
    hard_assignment: bool = True  # straight-through one-hot assignment (Gumbel noise in training if gumbel)
    gumbel: bool = True
    gumbel_tau: float = 1.0
    assign_eps: float = 1.0  # added to the per-group token count when averaging (released value 1)


@dataclass
class TextConfig(_Validated):
    """Text tower: the CLIP-style causal transformer, or the frozen MiniLM demo variant."""

    tower: Literal["transformer", "minilm"] = "transformer"
    context_length: int = 77  # CLIP BPE tokens incl. SOT/EOT
    vocab_size: int = 49408
    width: int = 256
    layers: int = 12
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class NPRConfig(_Validated):
    """Non-learnable Prototypical Regularization (PGSeg, docs/METHOD.md §3)."""

    enabled: bool = False  # False = plain GroupViT
    em_iters: int = 10  # T, no-grad EM iterations (image and text)
    text_prototypes: int = 8  # K of the text-side NPR
    momentum: float = 0.9  # prototype-buffer EMA factor (mu <- m*mu + (1-m)*batch mean)
    hrs_threshold: float = 0.1  # phi: keep a matched pair within phi of its best candidate (METHOD.md §3.4)
    pg_temperature: float = 0.1  # init of the learnable L_PG temperature (own logit scale)
    weight: float = 0.1  # L = L_itc + weight * (L_I1 + L_I2 + text_weight * L_T)
    text_weight: float = 0.1
    mapping_hidden: int = 4096  # reconstruction MLP hidden width (C -> hidden -> C)
    zero_init_mapping: bool = (
        False  # start the reconstruction MLP's output layer at zero (recon path off at init)
    )
    released_code: bool = False  # True: reproduce the four quirks of the released code (README "Method")
    with_mapping_text: bool = False  # build the released, unused mapping_text head (checkpoint compat only)


@dataclass
class ModelConfig(_Validated):
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    npr: NPRConfig = field(default_factory=NPRConfig)
    embed_dim: int = 256  # joint image-text embedding D
    proj_hidden: int = 4096  # projection-head MLP hidden width
    proj_layers: int = 2
    contrast_temperature: float = 0.07  # logit_scale init = ln(1 / T); exp is clamped at 100
    pool: Literal["tokens", "projected"] = "tokens"  # image embedding: project(mean of tokens) as released,
    # or mean of the projected tokens (the per-group embeddings used at inference)
    multi_label: int = 0  # GroupViT multi-label loss: prompts per caption (0 = off, released GCC+YFCC: 3)
    multi_label_weight: float = 1.0  # L += weight * L_ml
    multi_label_pool: Literal["image", "groups"] = "image"  # prompt vs image embedding (GroupViT), or vs the
    # best final group (max over groups; the demo variant's multiple-instance term)
    multi_label_template: str = "a photo of a {}."  # prompt built from each caption noun (templates=single)
    multi_label_templates: Literal["imagenet80", "single"] = "imagenet80"  # one of the 80 drawn per prompt
    multi_label_pad: bool = True  # fill each caption's prompts up to multi_label with the caption (released)
    multi_label_nouns: Literal["auto", "nltk", "rules"] = "auto"  # auto: nltk where its tagger data is
    # installed, else the rule set (METHOD.md §2.2)


@dataclass
class DataConfig(_Validated):
    train: str = ""  # shard dir, brace pattern, or index.json
    img_size: int = 224  # training crop, pixels
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    hflip: bool = True
    num_workers: int = 2
    shuffle_buffer: int = 1000
    cache_frozen_stem: bool = True  # frozen hybrid stem: encode each training image once (HDF5), then train
    datasets_file: str = ""  # datasets.toml naming more datasets for `train` (docs/WEB_DATA.md §2)
    decode: Literal["auto", "cpu", "gpu"] = "auto"  # JPEG decode path (docs/WEB_DATA.md §5); gpu needs CUDA


@dataclass
class TrainConfig(_Validated):
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 5.0
    seed: int = 0
    hard_assign_start: int = 0  # step from which hard (Gumbel) assignment is used; soft before it
    log_every: int = 10
    ckpt_every: int = 500
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    time_budget_s: float = 0.0  # > 0: stop early (with a checkpoint) once this many seconds have passed
    curves: bool = True  # RUN/curves.png at each checkpoint and at the end (needs matplotlib: [plots])
    tensorboard: bool = False  # TensorBoard events in RUN/tensorboard/ (needs the [tensorboard] extra)
    kernels: Literal["auto", "torch", "triton"] = "auto"  # pgseg_core.kernels backend; PGSEG_KERNELS wins
    grad_cache_chunks: int = 1  # > 1: GradCache, each rank's batch in this many chunks (docs/TRAINING.md §4)
    activation_checkpointing: bool = False  # recompute the transformer blocks in the backward (less memory)
    compile: bool = False  # torch.compile the training forward
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: capture + autograd, no codegen)
    eval_every: int = 0  # > 0: zero-shot eval every this many steps, logged to metrics.jsonl
    eval_data: str = ""  # shards with validation splits; "" = data.train
    eval_splits: list[str] = field(default_factory=lambda: ["val-caption"])
    eval_images: int = 50  # at most this many images per split (0 = all)


@dataclass
class EvalConfig(_Validated):
    short_side: int = 448  # resize so the short side is this many pixels (long side capped at max_long)
    max_long: int = 2048
    mode: Literal["slide", "whole"] = "slide"
    crop: int = 448
    stride: int = 224
    bg_thresh: float = 0.95
    top_k: int = 5  # keep the top-k classes of the image embedding; 0 = all
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    rule: Literal["groupvit", "prob"] = (
        "groupvit"  # groupvit: affinity + bg_thresh; prob: softmax + prob_thresh
    )
    logit_scale: float = 0.0  # prob rule: softmax temperature s; 0 = the model's (min(exp(logit_scale), 100))
    prob_thresh: float = 0.1  # prob rule: background where the max class probability is below (bg datasets)
    area_thresh: float = 0.0  # prob rule, bg datasets: drop classes winning <= this fraction of the non-bg
    # area (SCLIP's area_thd; 0 = off)
    pamr_iters: int = 0  # PAMR refinement steps of the window-averaged maps (0 = off; docs/EVAL.md)
    pamr_dilations: list[int] = field(default_factory=lambda: [8, 16])  # PAMR neighbourhood dilations, pixels
    crop_fit: Literal["end", "centre", "floor"] = "end"  # windows not a multiple of 16: pad at the end,
    # pad both sides (SCLIP family) or drop the remainder (GroupViT); docs/EVAL.md


@dataclass
class RunConfig:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cuda_overrides: dict[str, Any] = field(default_factory=dict)  # dotted overrides applied on a CUDA device

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# numeric ranges: the one place they are checked


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``lo``..``hi`` (either may be open or absent), finite.

    ``text`` replaces the generated description (``>= 0``, ``> 0``, ``in [0, 1]``); ``note`` is appended in
    parentheses. A list field is checked entry by entry.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""
    text: str = ""

    def holds(self, value: float) -> bool:
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            text = f"lie in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        elif self.lo is not None:
            text = f"be {'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"be {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return text + (f" ({self.note})" if self.note else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_POS = Range(1)  # a count or a size of at least one
_NONNEG = Range(0)
_POSITIVE = Range(0, lo_open=True)
_UNIT = Range(0, 1)
_FRACTION = Range(0, 1, hi_open=True)
_PIXELS = Range(1, text="be a positive number of pixels")

#: Section -> field -> accepted range, for every numeric config field with an obvious range.
RANGES: dict[str, dict[str, Range]] = {
    "model.vision": {
        "img_size": Range(16, note="pixels"), "patch_size": _POS, "in_chans": _POS, "embed_dim": _POS,
        "depths": _NONNEG, "num_heads": _POS, "num_group_tokens": _NONNEG, "num_output_groups": _POS,
        "mlp_ratio": _POSITIVE, "drop_rate": _FRACTION, "attn_drop_rate": _FRACTION,
        "drop_path_rate": _FRACTION, "gumbel_tau": _POSITIVE, "assign_eps": _NONNEG,
    },
    "model.text": {
        "context_length": _POS, "vocab_size": _POS, "width": _POS, "layers": _NONNEG, "heads": _POS,
        "mlp_ratio": _POSITIVE,
    },
    "model.npr": {
        "em_iters": _NONNEG, "text_prototypes": _POS, "momentum": _UNIT, "hrs_threshold": _UNIT,
        "pg_temperature": _POSITIVE, "weight": _NONNEG, "text_weight": _NONNEG, "mapping_hidden": _POS,
    },
    "model": {
        "embed_dim": _POS, "proj_hidden": _POS, "proj_layers": _POS, "contrast_temperature": _POSITIVE,
        "multi_label": _NONNEG, "multi_label_weight": _NONNEG,
    },
    "data": {
        "img_size": Range(16, note="pixels"), "crop_scale": Range(0, 1, lo_open=True), "num_workers": _NONNEG,
        "shuffle_buffer": _NONNEG,
    },
    "train": {
        "steps": _NONNEG, "batch_size": _POS, "lr": _POSITIVE, "warmup_lr": _NONNEG, "min_lr": _NONNEG,
        "warmup_steps": _NONNEG, "weight_decay": _NONNEG, "betas": _FRACTION, "grad_clip": _POSITIVE,
        "seed": Range(0, 2**32 - 1), "hard_assign_start": _NONNEG, "log_every": _POS, "ckpt_every": _POS,
        "time_budget_s": Range(0, note="0 = no budget"), "grad_cache_chunks": _POS,
        "eval_every": Range(0, note="0 = off"), "eval_images": Range(0, note="0 = all"),
    },
    "eval": {
        "short_side": _PIXELS, "max_long": _PIXELS, "crop": _PIXELS, "stride": _PIXELS, "bg_thresh": _UNIT,
        "top_k": Range(0, note="0 = all"), "logit_scale": Range(0, note="0 = the model's"),
        "prob_thresh": _UNIT, "area_thresh": _UNIT, "pamr_iters": _NONNEG, "pamr_dilations": _POS,
    },
}  # fmt: skip

_SECTIONS = {
    "VisionConfig": "model.vision",
    "TextConfig": "model.text",
    "NPRConfig": "model.npr",
    "ModelConfig": "model",
    "DataConfig": "data",
    "TrainConfig": "train",
    "EvalConfig": "eval",
}


def check_ranges(obj: Any, section: str) -> None:
    """Check the numeric fields of ``obj`` (any object with the section's attributes; missing ones are
    skipped) against ``RANGES[section]``.

    Raises:
        ConfigError: ``{section}.{key} must be >= 0, got -5`` (``must lie in [0, 1]``, ...) for the first
            value out of range or not a number.
    """
    for key, rng in RANGES[section].items():
        if not hasattr(obj, key):
            continue
        value = getattr(obj, key)
        entries = value if isinstance(value, (list, tuple)) else [value]
        try:
            ok = all(not isinstance(v, bool) and rng.holds(v) for v in entries)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            each = " (each entry)" if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"{section}.{key} must {rng.describe()}{each}, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# strict construction from dicts


def suggest_key(key: str, options: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` (difflib ratio >= 0.5), else the known keys."""
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(options))})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(float(value)) if tp is int else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys.

    Raises:
        ConfigError: an unknown key (with a suggestion) or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{suggest_key(key, names)}")
        tp = hints[key]
        if is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def parse_scalar(text: str) -> Any:
    """Parse a command-line value: JSON if it parses (numbers, lists, true/false), else the raw string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy of ``cfg`` with dotted overrides applied (``{"train.lr": "3e-4"}``).

    Raises:
        ConfigError: an unknown dotted path (with a suggestion) or a badly typed value.
    """
    data = cfg.to_dict()
    for dotted, raw in overrides.items():
        value = parse_scalar(raw) if isinstance(raw, str) else raw
        parts = dotted.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                opts = [k for k, v in node.items() if isinstance(v, dict)] if isinstance(node, dict) else []
                raise ConfigError(
                    f"unknown config section '{'.'.join(parts[: i + 1])}'{suggest_key(part, opts)}"
                )
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigError(f"unknown config key '{dotted}'{suggest_key(leaf, list(node))}")
        node[leaf] = value
    return from_dict(RunConfig, data)


def list_presets() -> list[str]:
    """Names of the bundled presets (``pgseg_core/presets/*.json``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a named preset or a JSON config file, then apply dotted overrides.

    Args:
        name_or_path: preset name (see :func:`list_presets`) or path to a JSON file in the same schema.
        overrides: dotted keys to values, e.g. ``{"train.steps": 200}``.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key or bad value.
    """
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        source = path
    elif (PRESET_DIR / f"{name_or_path}.json").exists():
        source = PRESET_DIR / f"{name_or_path}.json"
    else:
        raise ConfigError(
            f"unknown model preset or config file '{name_or_path}'"
            f"{suggest_key(str(name_or_path), list_presets())}"
        )
    try:
        data = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {source}: {e}") from e
    data.setdefault("name", source.stem)
    cfg = from_dict(RunConfig, data)
    return apply_overrides(cfg, overrides or {})


def config_hash(cfg: RunConfig | dict[str, Any], section: str = "model") -> str:
    """Short stable hash of one config section (default: the model), for caches and checkpoints."""
    import hashlib

    data = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    blob = json.dumps(data.get(section, data), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for convenience."""
    return dataclasses.replace(obj, **changes)


def eval_with_overrides(cfg: RunConfig, overrides: dict[str, Any] | None) -> EvalConfig:
    """``cfg.eval`` with ``overrides`` applied: EvalConfig field names, the ``eval.`` prefix optional
    (``{"bg_thresh": 0.5}`` or ``{"eval.bg_thresh": "0.5"}``; strings are parsed like CLI values).

    Raises:
        ConfigError: an unknown field or a value of the wrong type.
    """
    if not overrides:
        return cfg.eval
    prefixed = {(k if k.startswith("eval.") else f"eval.{k}"): v for k, v in overrides.items()}
    return apply_overrides(cfg, prefixed).eval
