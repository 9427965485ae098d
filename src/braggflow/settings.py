"""Typed settings built once from the schema-validated config, and the params a rule records of them.

Defaults and ranges live in config/config.schema.yaml alone: ``from_config`` takes a section the schema has
filled in and refuses a missing key (naming it), it never supplies a value. Snakemake reruns a job when the
``repr`` of one of its params changes and ignores params that are not plain Python values, so what a rule
records is ``params()``: plain values in the settings' own field order (never the config file's key order),
only the fields that make the output's bytes. A script rebuilds the object with ``from_params``; a field the
rule did not record is ``Unset`` there and fails loudly when used, so no job can read a value that does not
rerun it.

How a job runs (threads, device, backend, nproc) is no setting here: scripts read it from ``snakemake.threads``
or ``snakemake.config``, so changing it reruns nothing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from .config import ConfigError


class Unset:
    """A field the rule did not record in its params: any use of it is an error that names it."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        object.__setattr__(self, "key", key)

    def _fail(self, *_args, **_kwargs):
        raise KeyError(f"config key '{self.key}' is not among this rule's params (so it must not change the output)")

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy, pickle and friends probe for optional protocols
            raise AttributeError(name)
        self._fail()

    __iter__ = __len__ = __bool__ = __float__ = __int__ = __index__ = __getitem__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __lt__ = __gt__ = __le__ = _fail
    __ge__ = _fail

    def __repr__(self) -> str:
        return f"Unset({self.key!r})"


def canonical(value: Any) -> Any:
    """Plain Python values with mappings in sorted key order (free-form config mappings such as a distribution)."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint.from_config(value, key)
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        return float(value)
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config key '{key}': {value!r} must be a whole number")
        return int(value)
    if hint is bool:
        return bool(value)
    if hint is dict:
        return canonical(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.params()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Section:
    """A config section (or sub-section) as a frozen dataclass whose fields are its keys."""

    KEY: ClassVar[str] = ""  # where the section lives in the config, for messages

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], key: str | None = None):
        """The section as the schema filled it in; ConfigError naming a key it lacks."""
        key = key or cls.KEY
        hints = cls._hints()
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in cfg:
                raise ConfigError(f"config key '{key}.{f.name}' is missing (the schema fills it in: validate first)")
            values[f.name] = _convert(hints[f.name], cfg[f.name], f"{key}.{f.name}")
        return cls(**values)

    def params(self, *keys: str) -> dict[str, Any]:
        """What a rule records: every field, or only ``keys`` (dotted for sub-sections: 'baseline.max_tuning_frames'),
        in field order."""
        if not keys:
            return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                    if not isinstance(getattr(self, f.name), Unset)}
        top: dict[str, list[str]] = {}
        for k in keys:
            head, _, rest = k.partition(".")
            if head not in {f.name for f in dataclasses.fields(self)}:
                raise KeyError(f"{type(self).__name__} has no field {head!r}")
            top.setdefault(head, [])
            if rest:
                top[head].append(rest)
        out = {}
        for f in dataclasses.fields(self):
            if f.name in top:
                value = getattr(self, f.name)
                out[f.name] = value.params(*top[f.name]) if top[f.name] else _plain(value)
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any], key: str | None = None):
        """Rebuild from ``params()`` (or a subset of it): what was not recorded is ``Unset``."""
        key = key or cls.KEY
        hints = cls._hints()
        values = {}
        for f in dataclasses.fields(cls):
            where = f"{key}.{f.name}"
            hint = hints[f.name]
            if f.name not in params:
                values[f.name] = Unset(where)
            elif isinstance(hint, type) and issubclass(hint, Section):
                values[f.name] = hint.from_params(params[f.name], where)
            else:
                values[f.name] = _convert(hint, params[f.name], where)
        return cls(**values)


# ---------------------------------------------------------------- training (rules/training.smk, rules/matched.smk)

@dataclasses.dataclass(frozen=True)
class FitSettings(Section):
    """What every network's optimisation takes (Adam, early stopping on the validation loss)."""

    batch_size: int
    epochs: int
    patience: int
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class PeakFinderSettings(FitSettings):
    KEY: ClassVar[str] = "training.peak_finder"
    architecture: str
    base_channels: int
    cell_px: int
    tile_px: int
    tiles_per_frame: int
    pos_weight_power: float
    target: str
    threshold_grid: tuple[float, ...]
    min_spot_px_grid: tuple[int, ...]
    score_min_photons: float
    tune_min_recall: float | None

    def __post_init__(self):
        known = not any(isinstance(v, Unset) for v in (self.architecture, self.cell_px, self.tile_px))
        if known and self.architecture == "cell_unet" and self.tile_px % (2 * self.cell_px):
            raise ConfigError(f"config key '{self.KEY}.tile_px': {self.tile_px} is not a multiple of 2 cell_px "
                              f"= {2 * self.cell_px} (the cell_unet pools 2 x 2 cells)")

    def params(self, *keys: str) -> dict[str, Any]:
        """As every section's, less cell_px where the architecture has no cells (it changes no byte there)."""
        out = super().params(*keys)
        if self.architecture != "cell_unet":
            out.pop("cell_px", None)
        return out


@dataclasses.dataclass(frozen=True)
class HitClassifierSettings(FitSettings):
    KEY: ClassVar[str] = "training.hit_classifier"
    bin_px: int
    channels: int


@dataclasses.dataclass(frozen=True)
class EnergyDistanceSettings(FitSettings):
    KEY: ClassVar[str] = "training.energy_distance"
    radial_bins: int
    sectors: int
    channels: int


@dataclasses.dataclass(frozen=True)
class BaselineSettings(Section):
    KEY: ClassVar[str] = "training.baseline"
    kernel_half_px: int
    sigma_background: float
    min_local: int
    sigma_strong_grid: tuple[float, ...]
    min_spot_px_grid: tuple[int, ...]
    max_tuning_frames: int


@dataclasses.dataclass(frozen=True)
class TrainingSettings(Section):
    """``training``: what the models and baselines learn from. ``device`` and ``threads`` choose how a job runs
    and are read by the scripts (TrainingRun), not recorded."""

    KEY: ClassVar[str] = "training"
    validation_fraction: float
    test_fraction: float
    match_radius_px: float
    example_frames: int
    peak_finder: PeakFinderSettings
    hit_classifier: HitClassifierSettings
    energy_distance: EnergyDistanceSettings
    baseline: BaselineSettings

    @classmethod
    def with_peak_finder(cls, cfg: dict[str, Any], overrides: dict[str, Any]) -> "TrainingSettings":
        """The section with an experiment's ``matched.peak_finder`` overrides (validated against the schema)."""
        return cls.from_config({**cfg, "peak_finder": {**cfg["peak_finder"], **overrides}})

    # Per rule: the fields each training job's output depends on (the split and scores use all of the top level).
    SPLIT: ClassVar[tuple[str, ...]] = ("validation_fraction", "test_fraction")
    PEAK_FINDER: ClassVar[tuple[str, ...]] = SPLIT + ("match_radius_px", "peak_finder",
                                                      "baseline.max_tuning_frames")
    HIT_CLASSIFIER: ClassVar[tuple[str, ...]] = SPLIT + ("hit_classifier",)
    PROFILES: ClassVar[tuple[str, ...]] = SPLIT + ("energy_distance.radial_bins", "energy_distance.sectors")
    ENERGY_DISTANCE: ClassVar[tuple[str, ...]] = ("energy_distance",)
    BASELINE: ClassVar[tuple[str, ...]] = SPLIT + ("match_radius_px", "peak_finder.score_min_photons",
                                                   "peak_finder.tune_min_recall", "baseline")
    EXAMPLES: ClassVar[tuple[str, ...]] = SPLIT + ("example_frames",)
    PREDICT: ClassVar[tuple[str, ...]] = ("hit_classifier.bin_px",)  # the energy / camera-length model's are in its card


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """How a training or prediction job runs: not part of what it computes (weights are the same bytes on 1 or
    2 threads; braggflow.ml.determinism)."""

    device: str
    threads: int
    inference_engine: str = "torch"  # of the predict rule: torch or onnxruntime (ml.onnx_models)

    @classmethod
    def from_job(cls, config: dict[str, Any], threads: int, log=None) -> "TrainingRun":
        """The job's device, threads and inference engine; on a GPU device, claims one GPU for the job
        (``gpu.claim_gpu``) and logs which."""
        t = config["training"]
        run = cls(device=str(t["device"]), threads=int(threads), inference_engine=str(t.get("inference_engine", "torch")))
        if run.device != "cpu":
            from .gpu import claim_gpu

            claimed = claim_gpu()
            if log:
                log.info("GPU claimed for this job: %s", claimed)
        return run


# ---------------------------------------------------------------- evaluation (rules/experiments.smk)

@dataclasses.dataclass(frozen=True)
class EvaluationSettings(Section):
    KEY: ClassVar[str] = "evaluation"
    match_radius_px: float
    min_i_over_sigma: float
    resolution_bins: int


# ---------------------------------------------------------------- phase retrieval (rules/phases.smk)

@dataclasses.dataclass(frozen=True)
class PerturbationSettings(Section):
    model: str  # along_a or isotropic (phases.dataset.PERTURBATIONS)
    sigma_fraction: float  # sigma of each atom's move, as a fraction of the cell edge it moves along


@dataclasses.dataclass(frozen=True)
class PhaseSetSettings(Section):
    """One phase dataset (phases.sets.<name>): what makes the dataset file's bytes."""

    KEY: ClassVar[str] = "phases.sets.<name>"
    cifs: tuple[str, ...]
    unseen: tuple[str, ...]
    energy_kev: float
    grid_half_width: tuple[int, ...]
    perturbation: PerturbationSettings
    samples_per_crystal: int
    validation_fraction: float
    test_fraction: float
    seed: int


@dataclasses.dataclass(frozen=True)
class PhaseFitSettings(FitSettings):
    """The optimisation every phase model shares (phases.training, less device and threads)."""

    KEY: ClassVar[str] = "phases.training"
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class PhaseEvaluationSettings(Section):
    KEY: ClassVar[str] = "phases.evaluation"
    shells: int
    map_grid: int
    map_samples: int
