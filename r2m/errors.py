"""Errors for bad input. Each message names the file, line, field or path, and what was expected."""


class R2MError(ValueError):
    """Base class: the CLI prints these as one clear line and exits with status 2."""


class ConfigError(R2MError):
    """A config value is missing, unknown or out of range. The message names the field."""


class DataError(R2MError):
    """Bad input data. The message names the file, line and field."""


class ModelError(R2MError):
    """A model or tokenizer cannot be used as asked. The message names the path."""


class CheckpointError(R2MError):
    """A checkpoint or saved model file cannot be read (damaged, truncated). The message names the file."""


class FormatVersionError(R2MError):
    """An artefact on disk (a world cache entry, a checkpoint, SER's loop state, an R2M or critic directory) has a
    format version this r2m does not read. The message names the file, what it is, its version, the one expected,
    and what to do."""


class NumericError(RuntimeError):
    """Too many consecutive steps with NaN/inf values: the run stops with a checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: the run stopped after the current step, with a checkpoint."""
