"""Compatibility module (the README's Public API): re-exports :mod:`r2m.experience.rollout`, the sampling
primitives of :mod:`r2m.experience.sampling`, R2M's h (:mod:`r2m.models.feedback`) and the log-prob pass
(:mod:`r2m.models.logprobs`) it was made of."""

from r2m.experience.rollout import *  # noqa: F401,F403
from r2m.experience.sampling import *  # noqa: F401,F403
from r2m.models.feedback import *  # noqa: F401,F403
from r2m.models.logprobs import *  # noqa: F401,F403
