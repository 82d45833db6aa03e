"""The offline gold-reward world: sort the digits, with a known true reward.

Reward over-optimisation is measurable here on a CPU because the gold reward is exact while the
preference labeller is length-biased. The modules: ``task`` (prompts, the gold reward, hacking), ``data`` (the
generator and its files), ``tokenizer``, ``seeds``, ``view`` and ``view_accuracy`` (what the RM reads), ``likelihood``,
``ceiling``. Importing them is light: ``transformers`` is only imported when a tokenizer is built.
"""
