"""Pure math on tensors: losses, advantage estimators, KL control, reward shaping, pair choice and the
over-optimisation monitor's signals. Imports only torch, the stdlib and the layers below (never a higher layer of
r2m)."""
