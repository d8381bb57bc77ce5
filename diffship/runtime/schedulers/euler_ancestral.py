"""Euler ancestral: matches diffusers 0.42 ``EulerAncestralDiscreteScheduler``.

Honours beta_schedule, trained_betas, prediction_type (epsilon, v_prediction; diffusers does not implement
``sample``), timestep_spacing (leading, trailing, linspace), steps_offset, rescale_betas_zero_snr. Stochastic: every
step consumes one standard-normal draw of the sample's shape (``noise``, or the Generator's next draw), including
the last step where its weight is zero, as diffusers does.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import BETA_DEFAULTS, F32, SCHEDULE_CHOICES, train_sigmas
from diffship.runtime.schedulers.euler import SigmaScheduler, euler_timesteps, init_noise_sigma


class EulerAncestral(SigmaScheduler):
    class_name = "EulerAncestralDiscreteScheduler"
    stochastic = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }
    CHOICES = {**SCHEDULE_CHOICES, "prediction_type": ("epsilon", "v_prediction")}

    def _schedule(self, count: int) -> None:
        self.timesteps = euler_timesteps(self.config, count)
        base_sigmas = train_sigmas(self.alphas_cumprod)
        sigmas = np.interp(self.timesteps, np.arange(0, len(base_sigmas)), base_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.init_noise_sigma = init_noise_sigma(self.sigmas, self.config["timestep_spacing"])

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        x0 = self.predict_original(model_output, sigma_from, sample)
        sigma_up = np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
        sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
        derivative = (sample - x0) / sigma_from
        previous = sample + derivative * (sigma_down - sigma_from)
        draw = self._draw(noise, sample.shape)
        return (previous + draw * sigma_up).astype(F32, copy=False)
