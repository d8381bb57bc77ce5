"""PNDM in its PLMS mode (``skip_prk_steps: true``), as Stable Diffusion 1.x configs use it.

Matches diffusers 0.42 ``PNDMScheduler``. Honours beta_schedule, trained_betas, prediction_type (epsilon,
v_prediction), timestep_spacing (leading, trailing, linspace), steps_offset, set_alpha_to_one. Limitations: the
Runge-Kutta warm-up (``skip_prk_steps: false``) is refused. ``timesteps`` has num_inference_steps + 1 entries (the
second step repeats the first timestep, as diffusers does). Multistep: step in order.
"""

from __future__ import annotations

import numpy as np

from runtime.schedulers.common import BETA_DEFAULTS, F32, SCHEDULE_CHOICES, Scheduler, SchedulerError, predicted_noise


class PNDM(Scheduler):
    class_name = "PNDMScheduler"
    DEFAULTS = {
        **BETA_DEFAULTS,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    CHOICES = {**SCHEDULE_CHOICES, "prediction_type": ("epsilon", "v_prediction"), "skip_prk_steps": (True,)}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        train_steps = cfg["num_train_timesteps"]
        if count > train_steps:
            # diffusers degenerates to one repeated timestep here; refuse, as DDIM does.
            raise SchedulerError(f"num_inference_steps {count} exceeds num_train_timesteps {train_steps}")
        if cfg["timestep_spacing"] == "linspace":
            ascending = np.linspace(0, train_steps - 1, count).round().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            ascending = (np.arange(0, count) * (train_steps // count)).round() + cfg["steps_offset"]
        else:
            ascending = np.round(np.arange(train_steps, 0, -train_steps / count))[::-1].astype(np.int64) - 1
        plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        self.timesteps = plms.astype(np.int64)
        self.init_noise_sigma = 1.0
        self._stride = train_steps // count
        self._history: list[np.ndarray] = []
        """The last (up to four) model outputs, oldest first."""
        self._first_sample: np.ndarray | None = None

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        timestep = int(self.timesteps[i])
        prev_timestep = timestep - self._stride
        # diffusers branches on how many steps were taken, not on the index: an image-to-image run that begins
        # mid-schedule treats its second step as the repeat, as diffusers does.
        taken = self.steps_taken
        if taken != 1:
            self._history = [*self._history[-3:], model_output]
        else:
            # Step 1 re-evaluates the first timestep: average the two outputs and restart from the first sample.
            prev_timestep, timestep = timestep, timestep + self._stride
        history = self._history
        if len(history) == 1 and taken == 0:
            self._first_sample = sample
        elif len(history) == 1 and taken == 1:
            model_output = (model_output + history[-1]) / 2
            assert self._first_sample is not None
            sample, self._first_sample = self._first_sample, None
        elif len(history) == 2:
            model_output = (3 * history[-1] - history[-2]) / 2
        elif len(history) == 3:
            model_output = (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4])
        self.steps_taken += 1
        return self._previous_sample(sample, timestep, prev_timestep, model_output)

    def _previous_sample(
        self, sample: np.ndarray, timestep: int, prev_timestep: int, model_output: np.ndarray
    ) -> np.ndarray:
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod()
        beta_t = F32(1.0) - alpha_t
        beta_prev = F32(1.0) - alpha_prev
        model_output = predicted_noise(self.config["prediction_type"], model_output, sample, np.sqrt(alpha_t),
                                       np.sqrt(beta_t))
        sample_coeff = np.sqrt(alpha_prev / alpha_t)
        denominator = alpha_t * np.sqrt(beta_prev) + np.sqrt(alpha_t * beta_t * alpha_prev)
        previous = sample_coeff * sample - (alpha_prev - alpha_t) * model_output / denominator
        return previous.astype(F32, copy=False)
