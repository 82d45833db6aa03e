"""The object API (docs/PYTHON.md): trainers over the recipes' loops, their TRL-named arguments, callbacks."""
