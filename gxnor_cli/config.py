"""Typed configuration: dataclass schemas, Hydra composition and validation.

The dataclasses below are the one source of truth for every key: its type, its default
and a one-line meaning (``metadata["help"]``, shown by ``gxnor train --help``).  The
YAML files in ``conf/`` are presets: each sets only the keys where it differs.

``load_config(overrides)`` lets Hydra compose the presets chosen on the command line
(``data=mnist``, ``experiment=fashion_gxnor``; no argv, no cwd change, no output dirs),
merges them onto the schema, then sets the ``key=value`` overrides, so command-line keys
win over any preset.  Every key and group option is checked against the schema and each
section runs its domain checks; any problem is a :class:`ConfigError` with one line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .data.sources import DATASETS
from .discrete.pulses import FLOAT_ACTIVATIONS, PULSES
from .discrete.rules import RULES, settings_of
from .discrete.transitions import TRANSITIONS
from .discrete.space import Space, check_states
from .errors import UserError

SCHEDULES = ("exp", "cosine", "step", "constant")
#: Largest learning rate taken as meant (sgd's default is 20; Adam-scaled rules use ~0.01).
MAX_LR = 1e4
LOSSES = ("squared_hinge", "cross_entropy")
#: Bounds that catch a typo before it costs hours or memory (raise them in the code if you mean it).
MAX_EPOCHS = 1_000_000
MAX_BATCH = 1 << 20
#: MLflow keeps run names up to 250 characters and experiment names up to 500.
MAX_RUN_NAME, MAX_EXPERIMENT_NAME = 250, 500


class ConfigError(UserError):
    """A configuration the schema refuses."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def key(default: Any, meaning: str) -> Any:
    """A schema field: its default and the one-line meaning ``--help`` shows."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": meaning})
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class DataConfig:
    name: str = key("digits", "dataset: " + " | ".join(DATASETS))
    root: Optional[str] = key(None, "directory with the dataset's files (null: data/<name>)")
    download: bool = key(False, "fetch missing files (checksums verified) when a network exists")
    augment: bool = key(False, "random crop (pad 4) + horizontal flip of training images")
    limit: Optional[int] = key(None, "use only the first N (>= 2) training samples (quick trials)")

    def __post_init__(self):
        _require(self.name in DATASETS, f"data.name must be one of {', '.join(DATASETS)}; got {self.name!r}")
        _require(not (self.root or self.download) or not DATASETS[self.name].embedded,
                 f"data.root and data.download mean nothing for {self.name}, which ships inside its package; "
                 f"leave them unset")
        _require(self.limit is None or self.limit >= 2,
                 f"data.limit must be >= 2 (BatchNorm needs two samples to train on); got {self.limit}")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = key("32C3-MP2-64C3-MP2-256FC-10", "layers in the paper's notation, e.g. 32C5-MP2-512FC-10")
    padding: int = key(1, "zero padding of every convolution (0: 'valid' convolutions)")
    init_scale: float = key(1.0, "initial weights U(-s, s) projected onto the weight space")
    dense_init_scale: Optional[float] = key(None, "s of the dense layers (null: init_scale; the authors' "
                                                  "CIFAR net: 1.5)")
    bn_momentum: float = key(0.1, "BatchNorm running-statistics momentum, in (0, 1]")
    bn_eps: float = key(1e-4, "BatchNorm epsilon")
    width: float = key(1.0, "multiplies the units of every hidden layer (rounded; not the class count)")
    init_from: Optional[str] = key(None, "run id or checkpoint of a trained net of the same shape to start "
                                         "from (states: Proj(w / (1.4 mean|w|)) per layer)")
    target: Optional[str] = key(None, "your own network: a factory, module.function (also spelled "
                                      "model._target_), whose nn.Module gxnor discretizes; model.arch is then unused")
    args: dict[str, Any] = key({}, "keyword arguments of model.target (with model._target_ on the command line, "
                                   "model.NAME=value is model.args.NAME=value)")

    def __post_init__(self):
        _require(self.width > 0, f"model.width must be > 0; got {self.width}")
        _require(self.padding >= 0, f"model.padding must be >= 0; got {self.padding}")
        _require(self.init_scale > 0, f"model.init_scale must be > 0; got {self.init_scale}")
        _require(self.dense_init_scale is None or self.dense_init_scale > 0,
                 f"model.dense_init_scale must be > 0; got {self.dense_init_scale}")
        _require(0 < self.bn_momentum <= 1, f"model.bn_momentum must be in (0, 1]; got {self.bn_momentum}")
        _require(self.bn_eps > 0, f"model.bn_eps must be > 0; got {self.bn_eps}")
        _require(self.target is None or re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", self.target) is not None,
                 f"model.target must be a dotted path module.function; got {self.target!r}")
        _require(not self.args or self.target is not None,
                 f"model.args {sorted(self.args)} are keyword arguments of model.target, which is not set")
        _require(not (self.target and self.init_from),
                 "model.init_from starts layer-notation nets from a trained one; it does not take model.target")


@dataclass(frozen=True)
class QuantConfig:
    weight_states: Optional[int] = key(3, "weight states: 2 | 3 | 5 | 9 | ... | 129, null: full precision")
    act_states: Optional[int] = key(3, "activation states, as weight_states")
    window: Optional[float] = key(None, "sparsity window r: phi(x) = 0 for |x| <= r (null: half a step, dz / 2: "
                                        "0.5 ternary, 0.25 with 5 states; binary: 0)")
    pulse: str = key("rect", "derivative pulse: " + " | ".join(PULSES))
    pulse_width: Optional[float] = key(None, "half-width a of each pulse (> 0; null: dz / 2, so that rect pulses "
                                             "pass slope 1 on |x| <= 1: 0.5 ternary, 1 binary)")
    step: Optional[float] = key(None, "distance between thresholds of multi-level phi (null: dz)")
    float_act: str = key("relu", "activation when act_states is null: " + " | ".join(FLOAT_ACTIVATIONS))

    def __post_init__(self):
        for name in ("weight_states", "act_states"):
            value = getattr(self, name)
            if value is not None:
                try:
                    check_states(value)
                except ValueError as err:
                    raise ConfigError(f"quant.{name}: {err}") from None
        if self.act_states is not None:  # null window and width: the activation's defaults, shown as numbers
            half = Space(self.act_states).half_step
            for name, value in (("window", 0.0 if self.act_states == 2 else half), ("pulse_width", half)):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        _require(self.window is None or self.window >= 0, f"quant.window must be >= 0; got {self.window}")
        _require(self.pulse in PULSES, f"quant.pulse must be one of {', '.join(PULSES)}; got {self.pulse!r}")
        _require(self.pulse_width is None or self.pulse_width > 0,
                 f"quant.pulse_width must be > 0; got {self.pulse_width}")
        _require(self.step is None or self.step > 0, f"quant.step must be > 0; got {self.step}")
        _require(self.float_act in FLOAT_ACTIVATIONS,
                 f"quant.float_act must be one of {', '.join(FLOAT_ACTIVATIONS)}; got {self.float_act!r}")


def _dst_schema() -> type:
    """DSTConfig: ``rule``, ``m`` and the union of every registered rule's settings.

    Each rule declares its own keys (gxnor_cli.discrete.dst); a key two rules share (beta1
    of adam and mom8) must have one default there.  Validation builds every rule's
    settings from the section, so a bad value is refused whichever rule is chosen.
    """
    fields = [("rule", str, key("adam", "how dW is proposed: " + " | ".join(RULES))),
              ("m", float, key(3.0, "nonlinear factor of the transition probability tanh(m |nu| / dz)")),
              ("transition", str, key("stochastic", "how states move: stochastic (the method: probability "
                                      "tanh(m |nu| / dz)) | hysteresis (an int8 position per weight; the "
                                      "state changes once the steps add up to half a state)"))]
    seen: dict[str, Any] = {}
    for rule in RULES.values():
        hints = typing.get_type_hints(rule.Settings)
        for f in dataclasses.fields(rule.Settings):
            if f.name in seen:
                assert seen[f.name] == f.default, f"dst.{f.name}: rules disagree on its default"
                continue
            seen[f.name] = f.default
            fields.append((f.name, hints[f.name], field(default=f.default, metadata=f.metadata)))

    def __post_init__(self):
        _require(self.rule in RULES, f"dst.rule must be one of {', '.join(RULES)}; got {self.rule!r}")
        _require(self.m > 0, f"dst.m must be > 0; got {self.m}")
        _require(self.transition in TRANSITIONS,
                 f"dst.transition must be one of {', '.join(TRANSITIONS)}; got {self.transition!r}")
        for name in RULES:
            try:
                RULES[name].Settings(**rule_settings(self, name))
            except ValueError as err:
                raise ConfigError(str(err)) from None

    return dataclasses.make_dataclass("DSTConfig", fields, frozen=True,
                                      namespace={"__post_init__": __post_init__, "__module__": __name__})


DSTConfig = _dst_schema()


def rule_settings(section: Any, rule: Optional[str] = None) -> dict[str, Any]:
    """The keys of a dst section that ``rule`` (default: its own rule) reads."""
    return {name: getattr(section, name) for name in settings_of(rule or section.rule)}


def dst_keys_read(section: Any) -> set[str]:
    """The keys of a dst section that have an effect: rule, transition, m (stochastic
    transitions only) and the rule's settings."""
    return {"rule", "transition", *(["m"] if section.transition == "stochastic" else []), *settings_of(section.rule)}


@dataclass(frozen=True)
class OptimConfig:
    lr: Optional[float] = key(None, "lr of the DST rule and of float weights (null: the rule's own)")
    lr_end: Optional[float] = key(None, "lr of the last epoch, exp and cosine schedules (null: lr / 100)")
    schedule: str = key("exp", "per-epoch lr schedule: " + " | ".join(SCHEDULES))
    step_every: int = key(10, "step schedule: multiply by gamma every this many epochs")
    gamma: float = key(0.1, "factor of the step schedule and of every milestone")
    milestones: list[int] = key([], "extra x gamma drops at these epochs (any schedule)")
    bn_lr: float = key(0.01, "Adam lr of the BatchNorm parameters (same schedule shape)")

    def __post_init__(self):
        _require(all(m >= 1 for m in self.milestones), f"optim.milestones must be epochs >= 1; got {self.milestones}")
        for name in ("lr", "lr_end", "bn_lr"):
            value = getattr(self, name)
            _require(value is None or 0 < value <= MAX_LR,
                     f"optim.{name} must be in (0, {MAX_LR:g}]; got {value}")
        _require(self.schedule in SCHEDULES,
                 f"optim.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        _require(self.step_every >= 1, f"optim.step_every must be >= 1; got {self.step_every}")
        _require(0 < self.gamma <= 1, f"optim.gamma must be in (0, 1]; got {self.gamma}")


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = key(30, "training epochs")
    batch_size: int = key(64, "samples per step (a last batch of one sample is merged into the one before)")
    seed: int = key(0, "seed of initial states, shuffles, splits and DST draws")
    device: str = key("auto", "auto | cpu | cuda | cuda:N")
    devices: int = key(1, "data-parallel processes (CUDA: one GPU each); the global batch stays batch_size")
    sync_bn: bool = key(False, "data parallel on CUDA: BatchNorm batch statistics over all ranks (SyncBatchNorm)")
    val_fraction: float = key(0.1, "share of the training set held out to select the checkpoint")
    loss: str = key("squared_hinge", "loss: " + " | ".join(LOSSES))
    threads: Optional[int] = key(None, "torch CPU threads (null: torch's default)")
    resume: Optional[str] = key(None, "run id or last.pt path to continue")
    teacher: Optional[str] = key(None, "run id or checkpoint of a trained net whose scores the student "
                                       "matches (distillation)")
    teacher_weight: float = key(1.0, "alpha of the distillation term: loss + alpha mean((s - s_teacher)^2)")
    out_dir: str = key("runs", "where checkpoints and the default MLflow store live")

    def __post_init__(self):
        _require(1 <= self.epochs <= MAX_EPOCHS, f"trainer.epochs must be in 1..{MAX_EPOCHS:,}; got {self.epochs}")
        _require(self.batch_size <= MAX_BATCH, f"trainer.batch_size must be <= {MAX_BATCH:,}; got {self.batch_size}")
        _require(bool(self.out_dir.strip()), "trainer.out_dir must name a directory (it is empty)")
        _require(self.batch_size >= 2,
                 f"trainer.batch_size must be >= 2 (BatchNorm normalises over a batch); got {self.batch_size}")
        _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
                 f"trainer.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        _require(0 < self.val_fraction < 1, f"trainer.val_fraction must be in (0, 1); got {self.val_fraction}")
        _require(self.loss in LOSSES, f"trainer.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        _require(self.threads is None or self.threads >= 1, f"trainer.threads must be >= 1; got {self.threads}")
        _require(self.devices >= 1, f"trainer.devices must be >= 1; got {self.devices}")
        _require(self.teacher_weight >= 0, f"trainer.teacher_weight must be >= 0; got {self.teacher_weight}")


@dataclass(frozen=True)
class TrackingConfig:
    uri: Optional[str] = key(None, "MLflow store (null: $MLFLOW_TRACKING_URI, else sqlite:///<out_dir>/mlflow.db)")
    experiment: str = key("gxnor", "MLflow experiment name")
    run_name: Optional[str] = key(None, "MLflow run name (null: what the run is, e.g. w3a3-r0.5-adam-s0)")

    def __post_init__(self):
        _require(bool(self.experiment.strip()) and len(self.experiment) <= MAX_EXPERIMENT_NAME,
                 f"tracking.experiment must be a name of 1 to {MAX_EXPERIMENT_NAME} characters; "
                 f"got {len(self.experiment)}")
        _require(self.run_name is None or 0 < len(self.run_name.strip()) and len(self.run_name) <= MAX_RUN_NAME,
                 f"tracking.run_name must have 1 to {MAX_RUN_NAME} characters (MLflow's limit); "
                 f"got {len(self.run_name or '')}")
        _require(self.uri is None or bool(self.uri.strip()), "tracking.uri is empty; leave it out (null) for the default")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    dst: DSTConfig = field(default_factory=DSTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        for section in GROUPS:
            for name, value in dataclasses.asdict(getattr(self, section)).items():
                if isinstance(value, float):
                    _require(math.isfinite(value), f"{section}.{name} must be a finite number; got {value}")
        # float weights (no DST) train with Adam: its lr.  Filled in while the Config is
        # made; from then on it is frozen (dataclasses.replace derives changed copies).
        rule = self.dst.rule if self.quant.weight_states else "adam"
        lr = self.optim.lr if self.optim.lr is not None else RULES[rule].default_lr
        lr_end = self.optim.lr_end if self.optim.lr_end is not None else lr / 100
        object.__setattr__(self, "optim", dataclasses.replace(self.optim, lr=lr, lr_end=lr_end))
        _require(self.optim.lr_end <= self.optim.lr,
                 f"optim.lr_end ({self.optim.lr_end}) must not exceed optim.lr ({self.optim.lr})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def short_name(self) -> str:
        """A run name that says what the run is: ``w3a3-r0.5-mom8-s0`` (weight and activation
        state counts, f for full precision; the window; the DST rule, ``-hyst`` with hysteresis
        transitions, ``float`` for float weights; the seed)."""
        q, d = self.quant, self.dst
        parts = [f"w{q.weight_states or 'f'}a{q.act_states or 'f'}"]
        if q.act_states and q.act_states > 2:
            parts.append(f"r{q.window:g}")
        parts.append((d.rule + ("-hyst" if d.transition == "hysteresis" else "")) if q.weight_states else "float")
        return "-".join(parts + [f"s{self.trainer.seed}"])

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with dotted keys changed: ``cfg.replace(**{"trainer.threads": 2})``."""
        sections: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            section, _, leaf = name.partition(".")
            sections.setdefault(section, {})[leaf] = value
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)
                                            for section, values in sections.items()})


GROUPS = tuple(f.name for f in dataclasses.fields(Config))
#: Groups chosen on the command line: one per section, plus experiment presets (conf/experiment/,
#: `# @package _global_`) that pick options and set keys across sections for one tuned setting.
SELECTABLE = (*GROUPS, "experiment")


def section_schema(section: str) -> type:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}[section]


def field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(section_schema(section))]


def describe() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key, for help text and docs."""
    rows = []
    for section in GROUPS:
        schema = section_schema(section)
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            kind = re.sub(r"typing\.|Optional\[(.*)\]", r"\1", str(hints[f.name])).replace("<class '", "")
            kind = kind.replace("'>", "")
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rows.append((f"{section}.{f.name}", kind, "null" if default is None else str(default),
                         f.metadata.get("help", "")))
    return rows


def default_config_dir() -> Path:
    """conf/ shipped with the package (installed) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError("gxnor's conf/ directory is missing from this installation")


def group_options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def parse_overrides(overrides: list[str], config_dir: Path, allow_sweep: bool = False) -> list:
    """Hydra's parse of each override, after refusing additions, deletions, unknown keys and
    unknown group options (one line each)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for i, text in enumerate(overrides):
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(not_an_override(text, overrides[i + 1] if i + 1 < len(overrides) else None))
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as err:
            raise ConfigError(f"cannot parse override {text!r}: {str(err).splitlines()[0]}") from None
        name = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete():
            raise ConfigError(f"override {text!r}: adding or deleting keys is not allowed; "
                              f"set an existing key as key=value")
        if override.is_sweep_override() and not allow_sweep:
            raise ConfigError(f"override {text!r} is a sweep; use `gxnor sweep` for grids")
        if override.package is not None:
            raise ConfigError(f"override {text!r}: package overrides (@) are not supported")
        if name in SELECTABLE:
            options = group_options(config_dir, name)
            values = [str(v) for v in override.sweep_iterator()] if override.is_sweep_override() \
                else [str(override.value())]
            for value in values:
                if value not in options:
                    raise ConfigError(f"unknown {name} option {value!r}; available: {', '.join(options)}")
        else:
            section, _, leaf = name.partition(".")
            if name.startswith("model.args.") and name.count(".") == 2 and name[len("model.args."):].isidentifier():
                pass  # a keyword argument of model.target
            elif section not in GROUPS or "." in leaf or leaf not in field_names(section):
                raise ConfigError(f"unknown config key {name!r}" + _hint(section))
        parsed.append(override)
    return parsed


def factory_overrides(overrides: list[str], config_dir: Optional[Path] = None) -> list[str]:
    """Hydra's spelling of an own network, ``model._target_=pkg.build model.depth=20``, as the
    schema's: ``model.target=...`` and, once a target is given (on the command line, or by the
    ``model=NAME`` preset chosen), every other ``model.NAME=value`` as ``model.args.NAME=value``
    (the layer-notation keys mean nothing to an own network)."""
    import yaml

    out = [("model.target=" + o.split("=", 1)[1]) if o.startswith("model._target_=") else o for o in overrides]
    presets = [Path(config_dir) / "model" / f"{o[len('model='):]}.yaml" for o in out
               if config_dir and o.startswith("model=") and "," not in o]
    if not any(o.startswith("model.target=") for o in out) and \
            not any(p.is_file() and "target" in (yaml.safe_load(p.read_text()) or {}) for p in presets):
        return out
    def as_argument(text: str) -> str:
        name = text.split("=", 1)[0]
        leaf = name[len("model."):]
        if name.startswith("model.") and "=" in text and "." not in leaf and leaf not in ("target", "args"):
            return "model.args." + text[len("model."):]
        return text

    return [as_argument(o) for o in out]


def key_named(word: str) -> Optional[str]:
    """The config key a bare word means: itself (``trainer.epochs``), or the one key whose last
    part it is (``epochs``, ``--epochs``, ``weight-states``); None when there is none or several."""
    word = word.lstrip("-").replace("-", "_")
    keys = [name for name, *_ in describe()]
    if word in keys or word in SELECTABLE:
        return word
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == word]
    return matches[0] if len(matches) == 1 else None


def not_an_override(word: str, value: Optional[str] = None) -> str:
    """Why ``word`` (followed by ``value``) is no override, and what to write instead."""
    key = key_named(word)
    example = f"{key}={value if value is not None and '=' not in value else '...'}" if key else "trainer.epochs=3"
    return f"{word!r} is not an override: settings are written key=value, e.g. {example}"


def _hint(section: str) -> str:
    if section in GROUPS:
        return f"; keys of {section}: {', '.join(field_names(section))}"
    return f"; sections: {', '.join(GROUPS)}"


def compose(overrides: list[str], config_dir: Optional[Path] = None) -> Config:
    """Compose conf/ with ``overrides`` (no sweep syntax) and validate it into a Config.

    Hydra composes the group choices (presets); the schema supplies every default; the
    ``key=value`` overrides are set last, so they win over any preset.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir).resolve() if config_dir else default_config_dir()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in config dir {config_dir}")
    overrides = factory_overrides(overrides, config_dir)
    parsed = parse_overrides(overrides, config_dir)
    groups = [text for text, o in zip(overrides, parsed) if o.key_or_group in SELECTABLE]
    keys = [o for o in parsed if o.key_or_group not in SELECTABLE]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            raw = hydra_compose(config_name="config", overrides=groups)
        OmegaConf.set_struct(raw, False)
        raw = OmegaConf.to_container(raw, resolve=True)
        raw.pop("hydra", None)
        merged = OmegaConf.merge(_schema(), raw)
        for override in keys:
            OmegaConf.update(merged, override.key_or_group, override.value(), merge=False)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(err)) from None


def _schema():
    """The Config schema as a writable OmegaConf node (frozen dataclasses make read-only nodes,
    which could not take presets and overrides); ``to_object`` builds the frozen Config."""
    from omegaconf import DictConfig, OmegaConf

    def thaw(node):
        OmegaConf.set_readonly(node, False)
        for name in node:
            child = node._get_node(name)
            if isinstance(child, DictConfig):
                thaw(child)

    schema = OmegaConf.structured(Config)
    thaw(schema)
    for section in GROUPS:  # the declared defaults, not what __post_init__ derives from them (quant.window)
        for f in dataclasses.fields(section_schema(section)):
            if f.default is not dataclasses.MISSING:
                schema[section][f.name] = f.default
    return schema


def _one_line(err: Exception) -> str:
    """The first meaningful line of a Hydra/OmegaConf error, with its full key."""
    cause = err
    while cause.__cause__ is not None and isinstance(cause.__cause__, Exception):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return str(cause)
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    full_key = getattr(cause, "full_key", None)
    if full_key and full_key not in text:
        text = f"{full_key}: {text}"
    return f"invalid config: {text}"


def load_config(overrides: Optional[list[str]] = None, config_dir: Optional[Path] = None) -> Config:
    """The validated Config for ``overrides`` (Hydra syntax, e.g. ``quant.window=0.7``).

    A ``dst.*`` key set on the command line that the chosen rule does not read is refused
    (it would silently do nothing).
    """
    overrides = list(overrides or [])
    cfg = compose(overrides, config_dir)
    read = dst_keys_read(cfg.dst)
    for text in overrides:
        name = text.split("=", 1)[0]
        if name.startswith("dst.") and name[4:] not in read:
            raise ConfigError(f"{name} has no effect with dst.rule={cfg.dst.rule} "
                              f"dst.transition={cfg.dst.transition} (read: {', '.join(sorted(read - {'rule'}))})")
    return cfg


def flatten(cfg: Config) -> dict[str, Any]:
    """{'quant.window': 0.5, ...}: the config as dotted keys (MLflow params); of the dst keys,
    only those its rule reads."""
    read = dst_keys_read(cfg.dst)
    flat = {}
    for section, values in cfg.to_dict().items():
        for name, value in values.items():
            if section == "dst" and name not in read:
                continue
            if isinstance(value, dict):  # model.args: one param per keyword argument
                flat.update({f"{section}.{name}.{k}": v for k, v in value.items()})
            else:
                flat[f"{section}.{name}"] = value
    return flat


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (checkpoints); validates like load_config."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(_schema(), data))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(err)) from None
