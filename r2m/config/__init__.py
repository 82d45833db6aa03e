"""Typed, frozen configuration: one dataclass per part, YAML files plus ``a.b=c`` overrides.

Every field carries a docstring (the string literal under it). Values are validated in
``__post_init__`` and errors name the dotted field path. Configs are frozen: once parsed they are
never mutated; derive a new one with :func:`replace_path` instead.

A package: ``enums`` (closed choices), ``run`` / ``models`` / ``training`` / ``jobs`` (the sections' dataclasses),
``root`` (:class:`Config`), ``parsing`` (YAML, overrides, fingerprints), ``paths`` (per-path formats and splits),
``checks`` (the validation helper); ``commands`` (what each subcommand reads), ``help`` (``--help-config``),
``trl_names`` / ``trl_map`` / ``trl_recipe`` (TRL's names, docs/TRL.md). The sections' and parsing's public names are
re-exported here: ``from r2m.config import X`` works.
"""

from __future__ import annotations

from r2m.config.enums import (  # noqa: F401
    Algorithm,
    BackboneDType,
    Calibration,
    CriticInit,
    Device,
    DType,
    FusionInit,
    Generator,
    HiddenDevice,
    HiddenDType,
    JudgeMode,
    KeepLoop,
    KLEstimator,
    KLMode,
    LossAggregation,
    LRSchedule,
    Malloc,
    MixedPrecision,
    OldLogprobs,
    OnMismatch,
    OptimizerImpl,
    Overlong,
    PairChoice,
    PairLoss,
    PPOPrompts,
    R2MAblation,
    RatioLevel,
    Resume,
    RetrainData,
    RetrainFrom,
    RewardBaseline,
    RewardSource,
    Scaling,
    SERVariant,
    Tracker,
    VLLMDType,
)
from r2m.config.jobs import (  # noqa: F401
    DEMO_ARMS,
    DemoConfig,
    EvalConfig,
    JudgeConfig,
    SERConfig,
    SERLoRAConfig,
    SERRLOverrides,
)
from r2m.config.models import (  # noqa: F401
    PEFT_DEFAULT_TARGETS,
    ArchConfig,
    LoRAConfig,
    PolicyConfig,
    R2MConfig,
    RewardConfig,
)
from r2m.config.monitor import MonitorConfig  # noqa: F401
from r2m.config.parsing import (  # noqa: F401
    KEY_NEUTRAL,
    NON_SEMANTIC,
    _build,
    config_hash,
    field_docs,
    load_config,
    parse_override,
    replace_path,
    save_config,
    to_dict,
)
from r2m.config.paths import DatasetFormat, PathFormats, PathSplits, format_names  # noqa: F401
from r2m.config.root import (  # noqa: F401
    Config,
)
from r2m.config.run import (  # noqa: F401
    MIXED_PRECISIONS,
    DataConfig,
    MixtureConfig,
    RunConfig,
    WorldConfig,
)
from r2m.config.training import (  # noqa: F401
    GENERATORS,
    RLConfig,
    RMConfig,
    SFTConfig,
    VLLMConfig,
)
from r2m.errors import ConfigError  # noqa: F401  (re-exported)
