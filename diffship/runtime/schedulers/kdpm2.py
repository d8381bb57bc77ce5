"""DPM-Solver-2 in Karras et al.'s form (k-diffusion's ``sample_dpm_2``): matches diffusers 0.42
``KDPM2DiscreteScheduler``.

Honours beta_schedule (linear, scaled_linear, squaredcos_cap_v2), trained_betas, prediction_type (epsilon,
v_prediction; diffusers does not implement ``sample``), timestep_spacing (leading, trailing, linspace), steps_offset,
use_karras_sigmas, and sigma_min/sigma_max on Karras sigmas. Second order: each step takes an Euler half-step to the
geometric midpoint of its two sigmas, then a full step with the derivative the UNet gives there; ``timesteps``
interleave each step's timestep with its midpoint's (2N-1 entries; float32, float64 on Karras sigmas, as diffusers),
``sigmas`` and ``sigmas_interpol`` the matching tables. Step in order from ``begin_index``. Limitations: exponential
and beta sigmas are refused.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import F32, SCHEDULE_CHOICES, train_sigmas
from diffship.runtime.schedulers.euler import init_noise_sigma
from diffship.runtime.schedulers.heun import KScheduler, k_schedule


def log_midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.log().lerp(b.log(), 0.5).exp()`` in float32 as torch computes it (lerp at weight 0.5 is ``end - (end -
    start) * 0.5``), with torch's inf/NaN where a sigma is 0. log and exp are taken in float64 and rounded: torch's
    float32 ones are within an ulp of that, numpy's float32 exp is an ulp off it for 40% of inputs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        start, end = np.log(a.astype(np.float64)).astype(F32), np.log(b.astype(np.float64)).astype(F32)
        return np.exp((end - (end - start) * F32(0.5)).astype(np.float64)).astype(F32)


def interpolated_timesteps(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional train timesteps of the float32 ``sigmas`` (diffusers' ``_sigma_to_t``). diffusers passes torch
    float32 tensors here, so unlike ``common.sigma_to_t`` every operation is float32; the integer indices too."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sigma = np.log(np.maximum(sigmas, F32(1e-10)))
        dists = log_sigma - log_sigmas[:, np.newaxis]
        low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        weight = np.clip((low - log_sigma) / (low - high), F32(0.0), F32(1.0))
        return (F32(1.0) - weight) * low_idx.astype(F32) + weight * high_idx.astype(F32)


def interleave(values: np.ndarray) -> np.ndarray:
    """``values[0]``, every later one twice, the last once more: the layout of the family's per-call tables."""
    return np.concatenate([values[:1], np.repeat(values[1:], 2), values[-1:]])


class KDPM2(KScheduler):
    class_name = "KDPM2DiscreteScheduler"
    CHOICES = {**SCHEDULE_CHOICES, "prediction_type": ("epsilon", "v_prediction")}

    sigmas_interpol: np.ndarray

    def _schedule(self, count: int) -> None:
        timesteps, sigmas = k_schedule(self.config, self.alphas_cumprod, count)
        if self.config["use_karras_sigmas"]:
            timesteps = timesteps.round()
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        # Midpoint k lies between sigma k - 1 and sigma k (midpoint 0 is NaN and never used, as in diffusers).
        midpoints = log_midpoint(sigmas, np.roll(sigmas, 1))
        self.sigmas, self.sigmas_interpol = interleave(sigmas), interleave(midpoints)
        log_sigmas = np.log(train_sigmas(self.alphas_cumprod))
        midpoint_timesteps = interpolated_timesteps(midpoints, log_sigmas).astype(timesteps.dtype)
        pairs = np.stack([midpoint_timesteps[1:-1], timesteps[1:]], axis=-1).reshape(-1)
        self.timesteps = np.concatenate([timesteps[:1], pairs])
        self.init_noise_sigma = init_noise_sigma(self.sigmas, self.config["timestep_spacing"])
        self._sample: np.ndarray | None = None
        """The sample the Euler half started from, kept for the full step."""

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        self._check_index(i)
        # The second call evaluates the UNet at the midpoint sigma.
        sigma = self.sigmas_interpol[i] if self.correcting(i) else self.sigmas[i]
        return (sample / np.sqrt(sigma**2 + F32(1.0))).astype(F32, copy=False)

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        if not self.correcting(i):
            sigma, sigma_mid = self.sigmas[i], self.sigmas_interpol[i + 1]
            x0 = self.predict_original(model_output, sigma, sample)
            derivative, dt = (sample - x0) / sigma, sigma_mid - sigma
            previous = sample + derivative * dt
            self._sample = sample
        else:
            assert self._sample is not None
            sigma, sigma_mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
            x0 = self.predict_original(model_output, sigma_mid, sample)
            # The full step from the saved sample, with the derivative the UNet gave at the midpoint.
            derivative, dt = (sample - x0) / sigma_mid, sigma_next - sigma
            previous = self._sample + derivative * dt
            self._sample = None
        self.steps_taken += 1
        return previous.astype(F32, copy=False)
