"""The declarative recommendation-set file: batch sizes, eligibility, sets and their rules, experiments.

`load_sets_config(path)` reads the YAML the team edits (path from `Settings.recommendation_sets_path`)
and validates it completely before anything runs: unknown keys, unknown rule names, unknown or
mistyped rule parameters and bad arm weights are reported together, each with its location.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import pydantic
import yaml

from recsys_platform import schemas
from recsys_platform.batch.rules import RULES, RuleStep

logger = logging.getLogger(__name__)


class SetsConfigError(ValueError):
    """The recommendation-set file is invalid; the message lists every problem with its location."""


@dataclass(frozen=True)
class BatchConfig:
    """How batch scoring runs: shards, list depth, users per scoring block. What the candidates and their
    features are is the champion version's own params, not configured here."""

    shards: int = 8
    items_per_user: int = 500
    chunk_users: int = 1000  # users scored at once: a few dense users x items arrays per source


@dataclass(frozen=True)
class Eligibility:
    """Which users get batch recommendations."""

    active_within_days: int | None = 30
    subscription_statuses: tuple[str, ...] = ("trial", "subscriber")
    languages: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SetConfig:
    """One named recommendation set: its title, size and ordered rules."""

    name: str
    title: str
    size: int
    rules: tuple[RuleStep, ...]


@dataclass(frozen=True)
class ExperimentConfig:
    """An A/B/n experiment: arms with weights, the control arm, the surface and the window."""

    name: str
    arms: dict[str, float]
    control: str
    surface: str
    start: str | None = None  # ISO timestamp; None = `duration_days` before the latest event
    duration_days: int = 7
    # What each arm is served (ARM_SOURCES): the surface's rules-processed set, the popularity list of the user's
    # segment, or the champion model's own ranking. The API, the batch sets and the export all read it. Empty: the
    # experiment is analysed but changes nothing anyone is served (opt-in, so an example in the file cannot send a
    # third of the users the popularity list).
    serves: dict[str, str] = field(default_factory=dict)

    @property
    def changes_serving(self) -> bool:
        """Whether the arms are served different lists (`serves` is declared)."""
        return bool(self.serves)

    def source_of(self, arm: str) -> str:
        """The source arm `arm` is served (the set for an arm `serves` does not map)."""
        return self.serves.get(arm, "set")


ARM_SOURCES = ("set", "popularity", "model")


@dataclass(frozen=True)
class SetsConfig:
    """The whole file."""

    batch: BatchConfig = field(default_factory=BatchConfig)
    eligibility: Eligibility = field(default_factory=Eligibility)
    sets: tuple[SetConfig, ...] = ()
    experiments: tuple[ExperimentConfig, ...] = ()

    def set(self, name: str) -> SetConfig:
        """The set called `name`."""
        for s in self.sets:
            if s.name == name:
                return s
        raise KeyError(f"no recommendation set {name!r}; configured: {[s.name for s in self.sets]}")

    def experiment(self, name: str) -> ExperimentConfig:
        """The experiment called `name`."""
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(f"no experiment {name!r}; configured: {[e.name for e in self.experiments]}")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section(raw: Any, where: str, cls: type, errors: list[str]) -> Any:
    """Build a flat dataclass section from a mapping, checking keys and types."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return cls()
    known = list(cls.__dataclass_fields__)
    kwargs = {}
    hints = get_type_hints(cls)
    for key, value in raw.items():
        if key not in known:
            errors.append(f"{where}.{key}: unknown key{_suggest(str(key), known)}; allowed: {known}")
            continue
        try:
            kwargs[key] = pydantic.TypeAdapter(hints[key]).validate_python(value, strict=False)
        except pydantic.ValidationError as exc:
            errors.append(f"{where}.{key}: {exc.errors()[0]['msg']} (got {value!r})")
    return cls(**kwargs)


def _rule_step(raw: Any, where: str, errors: list[str]) -> RuleStep | None:
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, params = next(iter(raw.items()))
        params = params or {}
    else:
        errors.append(f"{where}: a rule is a name or a one-key mapping {{name: {{param: value}}}}, got {raw!r}")
        return None
    if name not in RULES:
        errors.append(f"{where}: unknown rule {name!r}{_suggest(str(name), list(RULES))}; known: {sorted(RULES)}")
        return None
    if not isinstance(params, dict):
        errors.append(f"{where} ({name}): parameters must be a mapping, got {params!r}")
        return None
    types = RULES[name].param_types()
    ok = True
    checked = {}
    for key, value in params.items():
        if key not in types:
            errors.append(
                f"{where} ({name}): unknown parameter {key!r}{_suggest(str(key), list(types))}; "
                f"accepted: {sorted(types)}"
            )
            ok = False
            continue
        try:
            checked[key] = pydantic.TypeAdapter(types[key]).validate_python(value, strict=True)
        except pydantic.ValidationError as exc:
            errors.append(f"{where} ({name}).{key}: {exc.errors()[0]['msg']} (got {value!r})")
            ok = False
    return RuleStep(name, checked) if ok else None


def _set(name: str, raw: Any, errors: list[str]) -> SetConfig | None:
    where = f"sets.{name}"
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping with title, size and rules")
        return None
    for key in raw:
        if key not in ("title", "size", "rules"):
            errors.append(f"{where}.{key}: unknown key{_suggest(str(key), ['title', 'size', 'rules'])}")
    size = raw.get("size", 20)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        errors.append(f"{where}.size: must be a positive integer, got {size!r}")
    rules_raw = raw.get("rules") or []
    if not isinstance(rules_raw, list):
        errors.append(f"{where}.rules: expected a list of rules")
        rules_raw = []
    steps = [_rule_step(r, f"{where}.rules[{i}]", errors) for i, r in enumerate(rules_raw)]
    return SetConfig(
        name, str(raw.get("title", name)), size if isinstance(size, int) else 20, tuple(s for s in steps if s)
    )


def _experiment(raw: Any, where: str, set_names: list[str], errors: list[str]) -> ExperimentConfig | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping")
        return None
    allowed = list(ExperimentConfig.__dataclass_fields__)
    for key in raw:
        if key not in allowed:
            errors.append(f"{where}.{key}: unknown key{_suggest(str(key), allowed)}; allowed: {allowed}")
    arms = raw.get("arms")
    if not isinstance(arms, dict) or len(arms) < 2:
        errors.append(f"{where}.arms: need a mapping of at least two arms to weights")
        return None
    if any(not isinstance(w, int | float) or isinstance(w, bool) or w <= 0 for w in arms.values()):
        errors.append(f"{where}.arms: weights must be positive numbers, got {arms}")
        return None
    control = raw.get("control", next(iter(arms)))
    if control not in arms:
        errors.append(f"{where}.control: {control!r} is not one of the arms {list(arms)}")
    surface = raw.get("surface", "recommended_for_you")
    if surface not in set_names:
        errors.append(f"{where}.surface: {surface!r} is not a configured set {set_names}")
    serves = raw.get("serves") or {}
    if not isinstance(serves, dict):
        errors.append(f"{where}.serves: expected a mapping of arm to source")
        serves = {}
    for arm, source in serves.items():
        if arm not in arms:
            errors.append(f"{where}.serves.{arm}: not one of the arms {list(arms)}")
        if source not in ARM_SOURCES:
            errors.append(f"{where}.serves.{arm}: source {source!r} is not one of {list(ARM_SOURCES)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        errors.append(f"{where}.name: required")
        return None
    return ExperimentConfig(
        name=name,
        arms={str(k): float(v) for k, v in arms.items()},
        control=str(control),
        surface=str(surface),
        start=None if raw.get("start") is None else str(raw["start"]),
        duration_days=int(raw.get("duration_days", 7)),
        serves={str(k): str(v) for k, v in serves.items()},
    )


def parse_sets_config(raw: Any, source: str = "<config>") -> SetsConfig:
    """Validate a parsed YAML document; raise `SetsConfigError` listing every problem."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise SetsConfigError(f"{source}: expected a mapping at the top level")
    top = ["batch", "eligibility", "sets", "experiments"]
    for key in raw:
        if key not in top:
            errors.append(f"{key}: unknown top-level key{_suggest(str(key), top)}; allowed: {top}")
    batch = _section(raw.get("batch"), "batch", BatchConfig, errors)
    elig = _section(raw.get("eligibility"), "eligibility", Eligibility, errors)
    for status in elig.subscription_statuses:
        if status not in schemas.SUBSCRIPTION_STATUSES:
            errors.append(
                f"eligibility.subscription_statuses: unknown status {status!r}; "
                f"known: {list(schemas.SUBSCRIPTION_STATUSES)}"
            )
    sets_raw = raw.get("sets") or {}
    if not isinstance(sets_raw, dict) or not sets_raw:
        errors.append("sets: need a mapping of at least one set name to its definition")
        sets_raw = {}
    sets = [s for name, body in sets_raw.items() if (s := _set(str(name), body, errors))]
    exps_raw = raw.get("experiments") or []
    if not isinstance(exps_raw, list):
        errors.append("experiments: expected a list")
        exps_raw = []
    exps = [e for i, r in enumerate(exps_raw) if (e := _experiment(r, f"experiments[{i}]", list(sets_raw), errors))]
    if errors:
        raise SetsConfigError(f"{source}: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    return SetsConfig(batch=batch, eligibility=elig, sets=tuple(sets), experiments=tuple(exps))


def load_sets_config(path: Path | str) -> SetsConfig:
    """Read and validate the recommendation-set YAML file at `path`."""
    path = Path(path)
    if not path.exists():
        raise SetsConfigError(f"{path}: recommendation-set file not found (set RECSYS_RECOMMENDATION_SETS)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SetsConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_sets_config(raw, str(path))
