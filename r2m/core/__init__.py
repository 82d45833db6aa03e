"""Pure math on tensors: losses, advantage estimators, KL control, reward shaping."""
