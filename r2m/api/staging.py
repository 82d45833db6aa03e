"""Objects the loops take by path (a transformers model), saved inside the run's own
directory, ``<output_dir>/inputs/``: they outlive the trainer (a saved R2M names its base reward model there, and
the run's config.yaml names them), and a resume finds the same paths, so its config matches the checkpoint's."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from r2m.data.sources import register_dataset
from r2m.errors import ConfigError
from r2m.fileio import atomic_dir
from r2m.runtime import runlock

log = logging.getLogger("r2m")


class Staging:
    """The overrides the trainer's objects became, and the writes that make them true (:meth:`write`)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "inputs"
        self.overrides: dict[str, Any] = {}
        self.datasets: list = []
        self._writes: list[tuple[Path, Callable[[Path], None]]] = []

    def dir(self, name: str) -> Path:
        return self.root / name

    def model(self, key: str, model: Any, tokenizer: Any, what: str, name: str) -> None:
        """``key`` (policy.path, reward.path, rm.init_from) from a path, or a transformers model saved as ``name``."""
        if model is None:
            return
        if isinstance(model, (str, Path)):
            self.overrides[key] = str(model)
            return
        if not hasattr(model, "save_pretrained") or tokenizer is None:
            raise ConfigError(f"{what}: expected a path or a transformers model with its tokenizer "
                              f"(processing_class=...), got {type(model).__name__}")

        def write(out: Path) -> None:
            model.save_pretrained(out)  # the loops read models by path (policy.path, reward.path)
            tokenizer.save_pretrained(out)

        self._add(key, name, write)

    def dataset(self, key: str, data: Any, what: str, name: str) -> None:
        """``key`` (data.prompts, ...) from a path, or a ``datasets.Dataset`` / ``IterableDataset`` read where it is
        (:func:`r2m.data.sources.register_dataset`: errors name ``what``, an IterableDataset streams)."""
        if data is None:
            return
        if isinstance(data, (str, Path)):
            self.overrides[key] = str(data)
            return
        self.overrides[key] = register_dataset(data, what)
        self.datasets.append(data)  # the registry holds weak references: the trainer keeps its datasets

    def _add(self, key: str, name: str, write: Callable[[Path], None]) -> None:
        self.overrides[key] = str(self.dir(name))
        self._writes.append((self.dir(name), write))

    def write(self) -> None:
        """Save every object, atomically, on the main process (the others wait), holding the run's lock."""
        if not self._writes:
            return
        with _main_process_first() as main:
            if not main:
                return
            with runlock.holding(self.run_dir):
                for path, write in self._writes:
                    if path.suffix == ".jsonl":
                        path.parent.mkdir(parents=True, exist_ok=True)
                        tmp = path.with_name(f".tmp-{path.name}")
                        write(tmp)
                        tmp.replace(path)
                    else:
                        with atomic_dir(path) as tmp:
                            write(tmp)
                    log.info("saved the trainer's object for %s", path)


@contextlib.contextmanager
def _main_process_first() -> Iterator[bool]:
    """Yields whether this is the main process; under a multi-process launch the others wait for its block."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        yield True
        return
    from accelerate import PartialState

    state = PartialState()
    with state.main_process_first():
        yield state.is_main_process
