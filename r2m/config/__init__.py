"""Typed, frozen configuration: one dataclass per part, YAML files plus ``a.b=c`` overrides.

Every field carries a docstring (the string literal under it). Values are validated in
``__post_init__`` and errors name the dotted field path. Configs are frozen: once parsed they are
never mutated; derive a new one with :func:`r2m.config.parsing.replace_path` instead.

Each name has one home, its submodule: ``enums`` (closed choices), ``run`` / ``models`` / ``training`` / ``jobs`` /
``monitor`` (the sections' dataclasses), ``root`` (:class:`Config`), ``parsing`` (YAML, overrides, fingerprints),
``paths`` (per-path formats and splits), ``checks`` (the validation helper); ``commands`` (what each subcommand
reads), ``help`` (``--help-config``), ``trl_names`` / ``trl_map`` / ``trl_recipe`` (TRL's names, docs/TRL.md).
"""
