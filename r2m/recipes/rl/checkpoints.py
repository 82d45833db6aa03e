"""The RL run's checkpoints: the training state, atomic saves (older ones pruned), and the restore on resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from r2m.fileio import atomic_dir
from r2m.models.critic import load_critic, save_critic
from r2m.models.loading import save_model
from r2m.runtime.checkpoint import fingerprint, free_fields, prune, rng_state, set_rng_state, step_dir, write_state
from r2m.runtime.distributed import sharded_state_dict
from r2m.runtime.safeio import load_safetensors as load_file

log = logging.getLogger("r2m")



class CheckpointMixin:
    """Checkpoints of :class:`r2m.recipes.rl.run.RLRun`."""

    def training_state(self, step: int) -> dict:
        state = {"step": step, "sampler_position": self.sampler.position, "sampler": self.sampler.state_dict(),
                 "rng": rng_state(),
                 "optimizer": self.optimizer.state_dict(), "kl_ctl": self.kl_ctl.state_dict(),
                 "bad_steps": self.bad_steps, "omega_step": step}
        if self.maker.moments is not None:
            state["moments"] = self.maker.moments.state_dict()
        if self.critic_optimizer is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.rm_updater is not None:
            state["r2m_optimizer"] = self.rm_updater.optimizer.state_dict()
            state["r2m_initial"] = self.initial_rm_state
        return state

    def save_checkpoint(self, step: int) -> Path:
        """Everything needed to continue at step + 1, written atomically; older ones pruned."""

        final = step_dir(self.run.checkpoints, step)
        policy_state = sharded_state_dict(self.acc, self.policy)  # every rank takes part in gathering a sharded policy
        if self.acc.is_main_process:
            with atomic_dir(final) as tmp:
                save_model(self.acc.unwrap_model(self.policy), self.tok, tmp / "policy", policy_state)
                if self.rm_updater is not None:
                    self.rm_updater.model.save(tmp / "r2m", base_rm=str(self.inputs.reward_model))
                if self.critic is not None:
                    save_critic(self.acc.unwrap_model(self.critic), tmp / "critic")
                write_state(tmp, self.training_state(step), step, fingerprint(self.cfg), free_fields(self.cfg))
            prune(self.run.checkpoints, self.cfg.run.keep_checkpoints)
        self.acc.wait_for_everyone()
        self._saved_step = step
        return final

    def checkpoint_last_step(self, step: int) -> Optional[Path]:
        """The last step's checkpoint, unless this run saved (or resumed from) it already: a run extended later
        (rl.steps raised, run.resume=auto) resumes at this step, not at the last rl.save_every multiple."""
        if step <= 0 or step == getattr(self, "_saved_step", None):
            return None
        return self.save_checkpoint(step)

    def _restore(self, state: dict) -> None:
        d = self.resume_dir
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.sampler.load_state_dict(state.get("sampler") or {"position": state["sampler_position"]})
        self.bad_steps = state["bad_steps"]
        if "moments" in state:
            self.maker.moments.load_state_dict(state["moments"])
        if self.critic is not None:
            self.acc.unwrap_model(self.critic).load_state_dict(load_critic(d / "critic").state_dict())
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.rm_updater is not None:
            self.rm_updater.model.load_trainable_state(load_file(str(d / "r2m" / "r2m.safetensors")))
            self.rm_updater.optimizer.load_state_dict(state["r2m_optimizer"])
            self.initial_rm_state = state["r2m_initial"]
        self.start_step = self._saved_step = state["step"]
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", d, self.start_step)
