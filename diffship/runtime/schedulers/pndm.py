"""PNDM (Liu et al. 2022): matches diffusers 0.42 ``PNDMScheduler``, in both of its modes.

With ``skip_prk_steps: true`` (the Stable Diffusion configs' own) it is PLMS: ``timesteps`` has
num_inference_steps + 1 entries (the second step repeats the first timestep). With ``skip_prk_steps: false``
(diffusers' default, so what ``PNDMScheduler.from_config`` gives for a config without the key) the first three steps
are fourth-order Runge-Kutta, four UNet calls each (12 entries: each step's start, its midpoint twice, its end), then
PLMS takes over: num_inference_steps + 9 entries.

Honours beta_schedule, trained_betas, skip_prk_steps, prediction_type (epsilon, v_prediction), timestep_spacing
(leading, trailing, linspace), steps_offset, set_alpha_to_one. Limitations: the Runge-Kutta warm-up needs
num_inference_steps >= 4 and cannot start mid-schedule (image-to-image) - diffusers fails or goes wrong there (see
``begin``). Multistep: step in order.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    Scheduler,
    SchedulerError,
    UnsupportedConfigError,
    predicted_noise,
)

RK_STEPS = 3
"""Runge-Kutta steps before PLMS (diffusers' pndm_order 4, minus one: PLMS needs three earlier outputs)."""
RK_CALLS = 4 * RK_STEPS
"""UNet calls of the warm-up: four per Runge-Kutta step."""


class PNDM(Scheduler):
    class_name = "PNDMScheduler"
    below_train_steps = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    CHOICES = {**SCHEDULE_CHOICES, "prediction_type": ("epsilon", "v_prediction")}

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
        self._stride = train_steps // count
        if cfg["skip_prk_steps"]:
            self._rk_timesteps = np.zeros(0, dtype=np.int64)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            if count < RK_STEPS + 1:
                # diffusers' set_timesteps fails with a numpy broadcast error here: the warm-up spans 4 timesteps.
                raise SchedulerError(
                    f"PNDMScheduler: skip_prk_steps=False (the Runge-Kutta warm-up) needs num_inference_steps >= "
                    f"{RK_STEPS + 1}, got {count}; use more steps, or skip_prk_steps=True (PLMS)"
                )
            # diffusers' prk_timesteps: for each of the 4 highest timesteps t, t and t + stride // 2 (the midpoint
            # towards the next higher one); descending, each midpoint twice, the lowest timestep last.
            highest = np.repeat(ascending[-(RK_STEPS + 1):], 2) + np.tile(np.array([0, self._stride // 2]), RK_STEPS + 1)
            self._rk_timesteps = np.repeat(highest[:-1], 2)[1:-1][::-1].astype(np.int64)
            # PLMS starts at the Runge-Kutta part's end timestep, which it repeats.
            plms = ascending[:-RK_STEPS][::-1]
        self.timesteps = np.concatenate([self._rk_timesteps, plms]).astype(np.int64)
        self.init_noise_sigma = 1.0
        self._history: list[np.ndarray] = []
        """The last (up to four) model outputs, oldest first (Runge-Kutta steps add their first call's)."""
        self._first_sample: np.ndarray | None = None
        """The sample a Runge-Kutta step (or PLMS's repeated first step) starts from."""
        self._rk_sum: np.ndarray | None = None
        """The running 1/6, 1/3, 1/3 weighted sum of a Runge-Kutta step's outputs."""

    def begin(self, index: int) -> None:
        """As ``Scheduler.begin``; refused mid-schedule with the Runge-Kutta warm-up.

        diffusers' img2img pipelines run ``timesteps[index:]`` with PNDM's call counter at 0 (PNDM has no
        ``set_begin_index``): the Runge-Kutta steps then take their start timestep from the warm-up's own table, not
        the one they are at, treating a sample noised to e.g. t=701 as t=901, and the index counts the 12 warm-up
        entries as steps. That result is wrong, not a variant to match, so it is refused here.
        """
        if index != 0 and not self.config["skip_prk_steps"]:
            raise UnsupportedConfigError(
                f"PNDMScheduler: skip_prk_steps=False cannot start mid-schedule (begin index {index}, i.e. "
                "image-to-image or inpainting with strength < 1): diffusers' Runge-Kutta warm-up steps from the wrong "
                "noise level there; use skip_prk_steps=True (PLMS), or strength 1"
            )
        super().begin(index)

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        # diffusers branches on how many steps were taken (its counter), not on the index.
        if self.steps_taken < len(self._rk_timesteps):
            return self._step_rk(model_output, i, sample)
        return self._step_plms(model_output, i, sample)

    def _step_rk(self, model_output: np.ndarray, i: int, sample: np.ndarray) -> np.ndarray:
        """One of the four calls of a Runge-Kutta step (diffusers' ``step_prk``).

        Classic RK4 through PNDM's transfer (formula 9): every call starts from the step's start sample and
        timestep; calls 0 and 1 (of each four) land at the midpoint, half a stride below, calls 2 and 3 a full stride
        below, and the UNet is evaluated at each call's result. Call 3 uses the 1/6, 1/3, 1/3, 1/6 weighted sum of
        the four outputs; its result is the step's.
        """
        call = self.steps_taken
        timestep = int(self.timesteps[i])
        prev_timestep = timestep - (0 if call % 2 else self._stride // 2)
        start_timestep = int(self._rk_timesteps[call // 4 * 4])
        phase = call % 4
        if phase == 0:
            # diffusers adds to an integer 0 first, which leaves the product unchanged.
            self._rk_sum = F32(1 / 6) * model_output
            self._history = [*self._history, model_output]
            self._first_sample = sample
        elif phase in (1, 2):
            assert self._rk_sum is not None
            self._rk_sum = self._rk_sum + F32(1 / 3) * model_output
        else:
            assert self._rk_sum is not None
            model_output = self._rk_sum + F32(1 / 6) * model_output
            self._rk_sum = None
        assert self._first_sample is not None
        self.steps_taken += 1
        return self._previous_sample(self._first_sample, start_timestep, prev_timestep, model_output)

    def _step_plms(self, model_output: np.ndarray, i: int, sample: np.ndarray) -> np.ndarray:
        """A linear multistep step (diffusers' ``step_plms``); after the warm-up, always the fourth-order one."""
        timestep = int(self.timesteps[i])
        prev_timestep = timestep - self._stride
        # An image-to-image run that begins mid-schedule treats its second step as the repeat, as diffusers does.
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
