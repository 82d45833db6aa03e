"""Models: Hugging Face Auto loading (``loading``), the reward-model wrapper (``reward``), R2M's fusion (``fusion``)
and feedback RM (``r2m``, ``r2m_hub``), the policy's feedback h (``feedback``), log-prob passes (``logprobs``), the PPO
critic (``critic``), LoRA (``lora``)."""
