"""The object API (README "From Python"): trainers over the recipes' loops, their TRL-named arguments, callbacks."""
