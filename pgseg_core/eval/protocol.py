"""Evaluation protocol presets: packaged JSON files with per-dataset overrides.

A protocol (``pgseg_core/eval/protocols/<name>.json``) fixes every inference knob of one published
evaluation (docs/METHOD.md §4.2-4.4; the presets are tabulated in docs/EVAL.md):

- ``groupvit``: GroupViT / PGSeg as released; short side 448, slide 448/224, "a photo of a {}.",
  GroupViT rule with the top-5 filter and a per-dataset bg_thresh that depends on the checkpoint family
  (GroupViT: VOC .95, Context .35, COCO-Object .95; PGSeg: VOC .95, Context .36, COCO .85);
- ``sclip``: the training-free SCLIP family; short side 336 (COCO-Stuff 448, Cityscapes 560), slide
  224/112, the ``prob`` rule with logit scale 40 (VOC21 65, PC60 / COCO-Object 50), prob threshold 0.1,
  the 80 ImageNet templates and, on VOC21, SCLIP's area threshold 0.1.

File schema::

    {"name": str, "description": str,
     "class_names": "groupvit" | "sclip",          # which packaged class-name files the dataset uses
     "eval": {EvalConfig fields},                  # base settings ("templates" may name a packaged set)
     "datasets": {NAME: {"eval": {...},            # per-dataset overrides
                         "bg_thresh": {"groupvit": x, "pgseg": y},     # by checkpoint family
                         "class_names": {"pgseg": "pgseg"}}},          # class-name files by family
     "sources": {...}}                             # where the numbers come from (informational)

Precedence, lowest first: EvalConfig defaults, protocol ``eval``, the dataset's ``eval``, the dataset's
bg_thresh for the checkpoint family, then the user's ``--eval.key value`` overrides.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import EvalConfig, from_dict, parse_scalar, suggest_key
from ..errors import ConfigError
from ..prompt_templates import template_set

__all__ = [
    "PROTOCOL_DIR",
    "list_protocols",
    "load_protocol",
    "resolve_protocol",
    "model_family",
    "ResolvedProtocol",
]

PROTOCOL_DIR = Path(__file__).parent / "protocols"
FAMILIES = ("groupvit", "pgseg")


def list_protocols() -> list[str]:
    """Names of the packaged protocols."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json"))


def load_protocol(name: str) -> dict[str, Any]:
    """The raw JSON of protocol ``name`` (or of a ``.json`` file path in the same schema).

    Raises:
        ConfigError: unknown protocol (with a suggestion) or an unreadable / malformed file.
    """
    path = Path(name)
    if not (path.suffix == ".json" and path.is_file()):
        path = PROTOCOL_DIR / f"{name}.json"
        if not path.is_file():
            raise ConfigError(f"unknown protocol '{name}'{suggest_key(str(name), list_protocols())}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read protocol {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("eval", {}), dict):
        raise ConfigError(f"protocol {path} must be a JSON object with an 'eval' mapping")
    data.setdefault("name", path.stem)
    return data


def model_family(model_cfg: Any) -> str:
    """``"pgseg"`` when the model has NPR (PGSeg), else ``"groupvit"``; picks the bg_thresh column."""
    npr = getattr(model_cfg, "npr", None)
    return "pgseg" if npr is not None and bool(getattr(npr, "enabled", False)) else "groupvit"


@dataclass
class ResolvedProtocol:
    """A protocol applied to one dataset and checkpoint family.

    Attributes:
        name: protocol name.
        dataset: dataset name ("" when none).
        family: checkpoint family the bg_thresh was chosen for ("groupvit" / "pgseg").
        class_names: the class-name protocol to ask the dataset for (``ds.class_spec(class_names)``).
        eval_cfg: the resulting :class:`EvalConfig`.
        notes: human-readable lines on where settings came from (printed by the CLI).
    """

    name: str
    dataset: str
    family: str
    class_names: str
    eval_cfg: EvalConfig
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "family": self.family,
            "class_names": self.class_names,
            "notes": list(self.notes),
            "eval": asdict(self.eval_cfg),
        }


def _strip_eval_prefix(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        key = str(key)
        if "." in key:
            section, rest = key.split(".", 1)
            if section != "eval":
                raise ConfigError(
                    f"'{key}' is not an eval setting: evaluation accepts eval.KEY overrides only"
                )
            key = rest
        out[key] = parse_scalar(value) if isinstance(value, str) else value
    return out


def resolve_protocol(
    name: str, dataset: str = "", family: str = "groupvit", overrides: dict[str, Any] | None = None
) -> ResolvedProtocol:
    """Eval settings of protocol ``name`` on ``dataset`` for a checkpoint of ``family``, plus overrides.

    Args:
        name: protocol name (:func:`list_protocols`) or a protocol JSON path.
        dataset: dataset name (``voc21``, ``pc60``, ...); unknown names get the protocol's base settings.
        family: ``"groupvit"`` or ``"pgseg"`` (:func:`model_family`).
        overrides: ``{"bg_thresh": 0.5}`` or ``{"eval.bg_thresh": "0.5"}``; strings are parsed like CLI
            values.

    Returns:
        :class:`ResolvedProtocol`.

    Raises:
        ConfigError: unknown protocol, unknown eval key (with a suggestion) or a badly typed value.
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown checkpoint family '{family}': use one of {', '.join(FAMILIES)}")
    proto = load_protocol(name)
    pname = str(proto.get("name", name))
    settings: dict[str, Any] = dict(proto.get("eval", {}))
    notes: list[str] = []
    per_ds = (proto.get("datasets") or {}).get(dataset, {}) if dataset else {}
    if dataset and not per_ds:
        notes.append(f"protocol {pname} has no settings specific to {dataset}: base settings used")
    settings.update(per_ds.get("eval", {}))
    table = per_ds.get("bg_thresh")
    if isinstance(table, dict) and family in table:
        settings["bg_thresh"] = table[family]
        who = "PGSeg" if family == "pgseg" else "GroupViT"
        notes.append(
            f"bg_thresh {table[family]} ({who} release value for {dataset}; the checkpoint "
            f"{'has' if family == 'pgseg' else 'has no'} NPR)"
        )
    user = _strip_eval_prefix(overrides or {})
    if user:
        notes.append("overrides: " + ", ".join(f"{k}={v}" for k, v in user.items()))
    settings.update(user)
    templates = settings.get("templates")
    if isinstance(templates, str) and "{}" not in templates:  # a packaged set by name, e.g. "imagenet80"
        settings["templates"] = template_set(templates)
    eval_cfg = from_dict(EvalConfig, settings, where="eval")
    class_names = str(proto.get("class_names", pname))
    names_table = per_ds.get("class_names")
    if isinstance(names_table, dict) and family in names_table:
        class_names = str(names_table[family])
        notes.append(f"class names '{class_names}' (the {family} release's spelling for {dataset})")
    return ResolvedProtocol(pname, dataset, family, class_names, eval_cfg, notes)
