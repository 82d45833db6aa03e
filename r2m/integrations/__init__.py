"""R2M inside other libraries' trainers (``r2m.integrations.trl``: TRL's GRPOTrainer and RLOOTrainer).

Each integration imports its library only when imported itself, so ``import r2m`` never needs it.
"""
