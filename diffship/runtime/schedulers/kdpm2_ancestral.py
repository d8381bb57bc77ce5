"""Ancestral DPM-Solver-2 (k-diffusion's ``sample_dpm_2_ancestral``): matches diffusers 0.42
``KDPM2AncestralDiscreteScheduler``.

Honours beta_schedule (linear, scaled_linear, squaredcos_cap_v2), trained_betas, prediction_type (epsilon,
v_prediction; diffusers does not implement ``sample``), timestep_spacing (leading, trailing, linspace), steps_offset,
use_karras_sigmas, and sigma_min/sigma_max on Karras sigmas. Each step splits its move to the next sigma into a
deterministic part down to ``sigma_down`` and fresh noise of ``sigma_up`` (Euler ancestral's split), and takes the
deterministic part DPM-Solver-2's way: an Euler half-step to the geometric midpoint of sigma and sigma_down, then a
full step with the UNet's derivative there. Stochastic: each step's second call (every other call from
``begin_index``) consumes one standard-normal draw of the sample's shape, as diffusers' ``randn_tensor`` there; the
first calls draw nothing. ``timesteps`` interleave each step's timestep with its midpoint's (2N-1 entries; float32,
float64 on Karras sigmas). Step in order. Limitations: exponential and beta sigmas are refused. sigma_down is
computed as diffusers does, sqrt(sigma_next^2 - sigma_up^2), which cancels all but (sigma_next / sigma)^2 of its
terms: at 2-4 steps an ulp of difference in the sigmas (torch's float32 sqrt is not IEEE) moves the last midpoint and
its timestep by up to ~1e-2 relative, either way; the samples by ~1e-4 of their scale.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import F32, SCHEDULE_CHOICES, train_sigmas
from diffship.runtime.schedulers.euler import init_noise_sigma
from diffship.runtime.schedulers.heun import KScheduler, k_schedule
from diffship.runtime.schedulers.kdpm2 import interleave, interpolated_timesteps, log_midpoint


class KDPM2Ancestral(KScheduler):
    class_name = "KDPM2AncestralDiscreteScheduler"
    stochastic = True
    CHOICES = {**SCHEDULE_CHOICES, "prediction_type": ("epsilon", "v_prediction")}

    sigmas_interpol: np.ndarray
    sigmas_up: np.ndarray
    sigmas_down: np.ndarray

    def _schedule(self, count: int) -> None:
        timesteps, sigmas = k_schedule(self.config, self.alphas_cumprod, count)
        if self.config["use_karras_sigmas"]:
            timesteps = timesteps.round()
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        sigmas_next = np.roll(sigmas, -1)
        sigmas_next[-1] = 0.0
        # After the final sigma (0) these are 0/0: NaN as in diffusers, and never used.
        with np.errstate(divide="ignore", invalid="ignore"):
            sigmas_up = np.sqrt(sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2)
            sigmas_down = np.sqrt(sigmas_next**2 - sigmas_up**2)
        sigmas_down[-1] = 0.0
        midpoints = log_midpoint(sigmas, sigmas_down)
        # The last step is a plain Euler step to 0; its midpoint and the one after are 0.
        midpoints[-2:] = 0.0
        self.sigmas, self.sigmas_interpol = interleave(sigmas), interleave(midpoints)
        self.sigmas_up, self.sigmas_down = interleave(sigmas_up), interleave(sigmas_down)
        log_sigmas = np.log(train_sigmas(self.alphas_cumprod))
        midpoint_timesteps = interpolated_timesteps(midpoints, log_sigmas).astype(timesteps.dtype)
        pairs = np.stack([midpoint_timesteps[:-2], timesteps[1:]], axis=-1).reshape(-1)
        self.timesteps = np.concatenate([timesteps[:1], pairs])
        self.init_noise_sigma = init_noise_sigma(self.sigmas, self.config["timestep_spacing"])
        self._sample: np.ndarray | None = None
        """The sample the Euler half started from, kept for the full step."""

    def noise_at(self, i: int) -> bool:
        return self.correcting(i)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        self._check_index(i)
        # The second call evaluates the UNet at the midpoint sigma (this table is indexed by the step's first call).
        sigma = self.sigmas_interpol[i - 1] if self.correcting(i) else self.sigmas[i]
        return (sample / np.sqrt(sigma**2 + F32(1.0))).astype(F32, copy=False)

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        if not self.correcting(i):
            sigma, sigma_mid = self.sigmas[i], self.sigmas_interpol[i]
            x0 = self.predict_original(model_output, sigma, sample)
            derivative, dt = (sample - x0) / sigma, sigma_mid - sigma
            previous = sample + derivative * dt
            self._sample = sample
        else:
            assert self._sample is not None
            sigma, sigma_mid = self.sigmas[i - 1], self.sigmas_interpol[i - 1]
            sigma_up, sigma_down = self.sigmas_up[i - 1], self.sigmas_down[i - 1]
            x0 = self.predict_original(model_output, sigma_mid, sample)
            derivative, dt = (sample - x0) / sigma_mid, sigma_down - sigma
            previous = self._sample + derivative * dt
            previous = previous + self._draw(noise, sample.shape) * sigma_up
            self._sample = None
        self.steps_taken += 1
        return previous.astype(F32, copy=False)
