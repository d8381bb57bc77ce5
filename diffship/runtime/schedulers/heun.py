"""Heun's second-order method (Karras et al. 2022, Algorithm 1): matches diffusers 0.42 ``HeunDiscreteScheduler``.

Honours beta_schedule (linear, scaled_linear, squaredcos_cap_v2), trained_betas, prediction_type (epsilon,
v_prediction, sample), clip_sample with clip_sample_range, timestep_spacing (leading, trailing, linspace),
steps_offset, use_karras_sigmas, and sigma_min/sigma_max on Karras sigmas (diffusers reads them from the config it was
built from). Second order: two UNet calls per step, so ``timesteps`` holds each step's timestep twice (the first once,
2N-1 entries, float32) and ``sigmas`` the matching interleaved table. Each step's Euler half saves its derivative, dt
and sample for the correction half: step in order from ``begin_index``. Limitations: the ``exp`` beta schedule and
exponential/beta sigmas are refused; ``rescale_betas_zero_snr``, which diffusers' class does not have, is ignored as
diffusers ignores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffship.runtime.schedulers.common import BETA_DEFAULTS, F32, SCHEDULE_CHOICES
from diffship.runtime.schedulers.euler import SigmaScheduler, euler_timesteps, init_noise_sigma, interpolated_sigmas

K_DEFAULTS: dict[str, Any] = {
    **BETA_DEFAULTS,
    # diffusers' K-diffusion ports default to SD's betas, not BETA_DEFAULTS' DDPM ones.
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    # Not in these classes' signatures, but diffusers' _convert_to_karras reads them from the config when present.
    "sigma_min": None,
    "sigma_max": None,
}
"""The config keys Heun, KDPM2 and KDPM2 ancestral share."""
K_FIXED: dict[str, Any] = {"use_exponential_sigmas": False, "use_beta_sigmas": False}


def k_schedule(config: Mapping[str, Any], alphas_cumprod: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` timesteps (float32, or float64 on Karras sigmas) and float64 sigmas of the family, before
    interleaving."""
    return interpolated_sigmas(config, alphas_cumprod, euler_timesteps(config, count))


class KScheduler(SigmaScheduler):
    """The second-order family: two UNet calls per step, alternating from ``begin_index``."""

    order = 2
    DEFAULTS = K_DEFAULTS
    FIXED = K_FIXED

    def correcting(self, i: int) -> bool:
        """Whether call ``i`` is a step's second half: calls alternate from ``begin_index``, as diffusers' state
        does whatever index it begins at."""
        return (i - self.begin_index) % 2 == 1


class Heun(KScheduler):
    class_name = "HeunDiscreteScheduler"
    DEFAULTS = {**K_DEFAULTS, "clip_sample": False, "clip_sample_range": 1.0}
    CHOICES = SCHEDULE_CHOICES

    def _schedule(self, count: int) -> None:
        timesteps, sigmas = k_schedule(self.config, self.alphas_cumprod, count)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        # Both calls of a step see its sigma: the Euler half at its start, the correction at the next one.
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(np.float32)
        self.init_noise_sigma = init_noise_sigma(self.sigmas, self.config["timestep_spacing"])
        self._derivative: np.ndarray | None = None
        self._dt: np.float32 | None = None
        self._sample: np.ndarray | None = None
        """The Euler half's derivative, dt and input sample, kept for the correction half."""

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        if not self.correcting(i):
            sigma = self.sigmas[i]
            x0 = self._clip(self.predict_original(model_output, sigma, sample))
            derivative = (sample - x0) / sigma
            self._derivative, self._dt, self._sample = derivative, self.sigmas[i + 1] - sigma, sample
            previous = sample + derivative * self._dt
        else:
            assert self._derivative is not None and self._dt is not None and self._sample is not None
            # The model saw the Euler half's result at the next sigma: x0 and the derivative are taken there.
            sigma_next = self.sigmas[i]
            x0 = self._clip(self.predict_original(model_output, sigma_next, sample))
            derivative = (self._derivative + (sample - x0) / sigma_next) / F32(2)
            previous = self._sample + derivative * self._dt
            self._derivative = self._dt = self._sample = None
        self.steps_taken += 1
        return previous.astype(F32, copy=False)

    def _clip(self, x0: np.ndarray) -> np.ndarray:
        if not self.config["clip_sample"]:
            return x0
        limit = F32(self.config["clip_sample_range"])
        return np.clip(x0, -limit, limit)
