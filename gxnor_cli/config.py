"""Typed configuration: dataclass schemas, Hydra composition and validation.

``load_config(overrides)`` composes ``conf/config.yaml`` with the user's overrides
(Hydra's compose API: no argv, no cwd change, no output dirs), checks every key and
group option against the schema below, runs each section's domain checks and returns
a :class:`Config`.  Any problem is a :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .discrete.activation import FLOAT_ACTIVATIONS, PULSES
from .discrete.dst import RULES
from .discrete.space import check_states
from .errors import UserError

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "svhn")
SCHEDULES = ("exp", "cosine", "step", "constant")
LOSSES = ("squared_hinge", "cross_entropy")


class ConfigError(UserError):
    """A configuration the schema refuses."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = None  # directory with the dataset's files; None: data/<name>
    download: bool = False  # fetch missing files (checksums verified) when a network exists
    augment: bool = False  # random crop (pad 4) + horizontal flip, for CIFAR-10 / SVHN
    limit: Optional[int] = None  # use only the first N training samples (quick trials)

    def __post_init__(self):
        _require(self.name in DATASETS, f"data.name must be one of {', '.join(DATASETS)}; got {self.name!r}")
        _require(self.limit is None or self.limit > 0, f"data.limit must be > 0; got {self.limit}")


@dataclass
class ModelConfig:
    arch: str = "32C3-MP2-64C3-MP2-256FC-10"  # paper notation, see gxnor_cli.models
    padding: int = 1  # zero padding of every convolution (0: 'valid' convs as in the MNIST net)
    init_scale: float = 1.0  # initial weights U(-s, s) projected onto the weight space
    bn_momentum: float = 0.1
    bn_eps: float = 1e-4

    def __post_init__(self):
        _require(self.padding >= 0, f"model.padding must be >= 0; got {self.padding}")
        _require(self.init_scale > 0, f"model.init_scale must be > 0; got {self.init_scale}")
        _require(0 < self.bn_momentum <= 1, f"model.bn_momentum must be in (0, 1]; got {self.bn_momentum}")
        _require(self.bn_eps > 0, f"model.bn_eps must be > 0; got {self.bn_eps}")


@dataclass
class QuantConfig:
    weight_states: Optional[int] = 3  # 2 | 3 | 5 | 9 | ... | null (full precision)
    act_states: Optional[int] = 3
    window: float = 0.5  # sparsity window r of the activation
    pulse: str = "rect"  # derivative approximation: rect | tri
    pulse_width: float = 0.5  # half-width a of each pulse
    step: Optional[float] = None  # distance between thresholds of multi-level phi (null: dz)
    float_act: str = "relu"  # activation when act_states is null

    def __post_init__(self):
        for key in ("weight_states", "act_states"):
            value = getattr(self, key)
            if value is not None:
                try:
                    check_states(value)
                except ValueError as err:
                    raise ConfigError(f"quant.{key}: {err}") from None
        _require(self.window >= 0, f"quant.window must be >= 0; got {self.window}")
        _require(self.pulse in PULSES, f"quant.pulse must be one of {', '.join(PULSES)}; got {self.pulse!r}")
        _require(self.pulse_width > 0, f"quant.pulse_width must be > 0; got {self.pulse_width}")
        _require(self.step is None or self.step > 0, f"quant.step must be > 0; got {self.step}")
        _require(self.float_act in FLOAT_ACTIVATIONS,
                 f"quant.float_act must be one of {', '.join(FLOAT_ACTIVATIONS)}; got {self.float_act!r}")


@dataclass
class DSTConfig:
    rule: str = "adam"  # how dW is proposed: adam | sgd | rms | mom8
    m: float = 3.0  # nonlinear factor of tau = tanh(m |nu| / dz)
    beta1: float = 0.9  # adam; mom8's momentum factor
    beta2: float = 0.999  # adam
    eps: float = 1e-8  # adam
    rms_beta: float = 0.0  # rms, mom8: EMA factor of the per-tensor mean square (0: this step only)
    mom8_range: float = 1.0  # mom8: the int8 momentum covers [-R, R] (units of the gradient's RMS)

    def __post_init__(self):
        _require(self.rule in RULES, f"dst.rule must be one of {', '.join(RULES)}; got {self.rule!r}")
        _require(self.m > 0, f"dst.m must be > 0; got {self.m}")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "dst.beta1 and dst.beta2 must be in [0, 1)")
        _require(0 <= self.rms_beta < 1, f"dst.rms_beta must be in [0, 1); got {self.rms_beta}")
        _require(self.eps > 0, f"dst.eps must be > 0; got {self.eps}")
        _require(self.mom8_range > 0, f"dst.mom8_range must be > 0; got {self.mom8_range}")


#: The lr each DST rule works with when optim.lr is null (float weights use Adam's).
RULE_LR = {"adam": 0.01, "sgd": 20.0, "rms": 0.01, "mom8": 0.01}


@dataclass
class OptimConfig:
    lr: Optional[float] = None  # lr of the DST step rule and of float weights (null: the rule's RULE_LR)
    lr_end: Optional[float] = None  # lr of the last epoch, exp and cosine schedules (null: lr / 100)
    schedule: str = "exp"  # exp | cosine | step | constant, per epoch
    step_every: int = 10  # step schedule: multiply by gamma every this many epochs
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)  # extra x gamma drops at these epochs (any schedule)
    bn_lr: float = 0.01  # Adam lr of the BatchNorm parameters (same schedule shape)

    def __post_init__(self):
        _require(all(m >= 1 for m in self.milestones), f"optim.milestones must be epochs >= 1; got {self.milestones}")
        _require(all(v is None or v > 0 for v in (self.lr, self.lr_end, self.bn_lr)),
                 "optim.lr, optim.lr_end and optim.bn_lr must be > 0")
        _require(self.schedule in SCHEDULES,
                 f"optim.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        _require(self.step_every >= 1, f"optim.step_every must be >= 1; got {self.step_every}")
        _require(0 < self.gamma <= 1, f"optim.gamma must be in (0, 1]; got {self.gamma}")


@dataclass
class TrainerConfig:
    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    val_fraction: float = 0.1  # held out from train for model selection
    loss: str = "squared_hinge"  # squared_hinge (paper) | cross_entropy
    threads: Optional[int] = None  # torch CPU threads (null: torch's default)
    resume: Optional[str] = None  # run id or checkpoint path to continue
    out_dir: str = "runs"  # checkpoints and the default MLflow store live here

    def __post_init__(self):
        _require(self.epochs >= 1, f"trainer.epochs must be >= 1; got {self.epochs}")
        _require(self.batch_size >= 1, f"trainer.batch_size must be >= 1; got {self.batch_size}")
        _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
                 f"trainer.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        _require(0 < self.val_fraction < 1, f"trainer.val_fraction must be in (0, 1); got {self.val_fraction}")
        _require(self.loss in LOSSES, f"trainer.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        _require(self.threads is None or self.threads >= 1, f"trainer.threads must be >= 1; got {self.threads}")


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<out_dir>/mlflow.db
    experiment: str = "gxnor"
    run_name: Optional[str] = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    dst: DSTConfig = field(default_factory=DSTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        rule_lr = RULE_LR[self.dst.rule] if self.quant.weight_states else RULE_LR["adam"]
        if self.optim.lr is None:
            self.optim.lr = rule_lr
        if self.optim.lr_end is None:
            self.optim.lr_end = self.optim.lr / 100

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GROUPS = tuple(f.name for f in dataclasses.fields(Config))
#: Groups chosen on the command line: one per section, plus experiment presets (conf/experiment/,
#: `# @package _global_`) that pick options and set keys across sections for one tuned setting.
SELECTABLE = (*GROUPS, "experiment")


def default_config_dir() -> Path:
    """conf/ shipped with the package (installed) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError("gxnor's conf/ directory is missing from this installation")


def group_options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _check_overrides(overrides: list[str], config_dir: Path, allow_sweep: bool = False) -> None:
    """Refuse additions, deletions, unknown keys and unknown group options, one line each."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as err:
            raise ConfigError(f"cannot parse override {text!r}: {str(err).splitlines()[0]}") from None
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete():
            raise ConfigError(f"override {text!r}: adding or deleting keys is not allowed; "
                              f"set an existing key as key=value")
        if override.is_sweep_override() and not allow_sweep:
            raise ConfigError(f"override {text!r} is a sweep; use `gxnor sweep` for grids")
        if override.package is not None:
            raise ConfigError(f"override {text!r}: package overrides (@) are not supported")
        if key in SELECTABLE:
            options = group_options(config_dir, key)
            values = [str(v) for v in override.sweep_iterator()] if override.is_sweep_override() \
                else [str(override.value())]
            for value in values:
                if value not in options:
                    raise ConfigError(f"unknown {key} option {value!r}; available: {', '.join(options)}")
            continue
        section, _, name = key.partition(".")
        if section not in GROUPS or "." in name or name not in _field_names(section):
            raise ConfigError(f"unknown config key {key!r}" + _hint(section))


def _field_names(section: str) -> list[str]:
    schema = {f.name: f.type for f in dataclasses.fields(Config)}[section]
    cls = globals()[schema] if isinstance(schema, str) else schema
    return [f.name for f in dataclasses.fields(cls)]


def _hint(section: str) -> str:
    if section in GROUPS:
        return f"; keys of {section}: {', '.join(_field_names(section))}"
    return f"; sections: {', '.join(GROUPS)}"


def compose(overrides: list[str], config_dir: Optional[Path] = None) -> Config:
    """Compose conf/ with ``overrides`` (no sweep syntax) and validate it into a Config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir).resolve() if config_dir else default_config_dir()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in config dir {config_dir}")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            raw = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.set_struct(raw, False)
        raw = OmegaConf.to_container(raw, resolve=True)
        raw.pop("hydra", None)
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(err)) from None


def _one_line(err: Exception) -> str:
    """The first meaningful line of a Hydra/OmegaConf error, with its full key."""
    cause = err
    while cause.__cause__ is not None and isinstance(cause.__cause__, Exception):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return str(cause)
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    key = getattr(cause, "full_key", None)
    if key and key not in text:
        text = f"{key}: {text}"
    return f"invalid config: {text}"


def load_config(overrides: Optional[list[str]] = None, config_dir: Optional[Path] = None) -> Config:
    """The validated Config for ``overrides`` (Hydra syntax, e.g. ``quant.window=0.7``)."""
    overrides = list(overrides or [])
    _check_overrides(overrides, Path(config_dir).resolve() if config_dir else default_config_dir())
    return compose(overrides, config_dir)


def flatten(cfg: Config) -> dict[str, Any]:
    """{'quant.window': 0.5, ...}: the config as dotted keys (MLflow params)."""
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (checkpoints); validates like load_config."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(err)) from None
