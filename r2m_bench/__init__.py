"""The r2m benchmark: matched-KL comparisons in the gold-reward worlds, their statistics and their reports.

It sits beside the library and imports it; nothing in ``r2m`` imports it (tests/test_layers.py). ``r2m bench``
reaches it through the entry-point group ``r2m.commands`` (pyproject.toml; :mod:`r2m_bench.cli`). The modules:

- ``cli``: the ``r2m bench cost|speed|run`` subcommand;
- ``design`` (the design as data: worlds x algorithms x arms x seeds, claims, presets), ``runner`` (runs a design,
  resumable), ``verdicts`` (paired verdicts at matched KL), ``report`` (``docs/BENCHMARKS.md``);
- ``frontier`` (gold at several KL budgets, peak and final gold, the frontier band), ``stats`` and ``power``
  (t-intervals, verdicts, Holm, the null simulation, ``verdicts.json``, seeds needed);
- ``alarm`` and ``alarm_eval``: the over-optimisation alarm's validation on held-out runs (docs/MONITOR.md);
- ``cost`` (R2M's cost per phase, Figure 7), ``speed``, ``speed_trl``, ``speed_report`` and ``old_logprobs``
  (r2m against TRL's RLOOTrainer; benchmarks/README.md), ``profiling`` (time and peak memory per phase), ``child``
  (a function run in a spawned process);
- ``memory``, ``memory_phases``, ``memory_host``, ``memory_report`` and ``live_bytes``: GPU memory per rank at the
  paper configs' real shapes and host memory per rank while they load (``r2m bench memory``);
- ``plots`` (gold-vs-KL frontiers), ``ser_table`` (SER Table 1 per world), ``provenance`` (the git commit);
- ``families``: random models of the paper configs' model families, with their tokenizers, for rehearsals, the
  GPU check and the TRL example's tiny run.

The statistics are described in benchmarks/README.md ("The statistics").
"""
