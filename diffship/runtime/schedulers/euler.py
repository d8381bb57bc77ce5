"""Euler (Karras et al. 2022, Algorithm 2 without churn): matches diffusers 0.42 ``EulerDiscreteScheduler``.

Honours beta_schedule, trained_betas, prediction_type (epsilon, v_prediction, sample), timestep_spacing (leading,
trailing, linspace), steps_offset, use_karras_sigmas with sigma_min/sigma_max, final_sigmas_type (zero,
sigma_min), rescale_betas_zero_snr. Timesteps are float32 and may be fractional. Limitations: exponential and beta
sigma schedules, ``interpolation_type: log_linear``, continuous timesteps, and step-time churn (``s_churn``, which
SD pipelines never pass) are not implemented; the first three are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    SIGMA_CHOICES,
    Scheduler,
    final_sigma,
    karras_schedule,
    spaced_timesteps,
    train_sigmas,
)


def euler_timesteps(config: Mapping[str, Any], count: int) -> np.ndarray:
    """float32 timesteps of the Euler family; linspace spacing keeps fractional values."""
    train_steps = config["num_train_timesteps"]
    return spaced_timesteps(config["timestep_spacing"], train_steps, count, config["steps_offset"]).astype(np.float32)


def interpolated_sigmas(
    config: Mapping[str, Any], alphas_cumprod: np.ndarray, timesteps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The train sigmas interpolated at ``timesteps``; with ``use_karras_sigmas``, Karras sigmas instead, between the
    config's sigma_min/sigma_max (default: the interpolated ends, as diffusers' ``_convert_to_karras``) and the
    fractional timesteps they fall on. Returns (timesteps, sigmas), float64 sigmas."""
    base_sigmas = train_sigmas(alphas_cumprod)
    sigmas = np.interp(timesteps, np.arange(0, len(base_sigmas)), base_sigmas)
    if config.get("use_karras_sigmas"):
        low, high = config.get("sigma_min"), config.get("sigma_max")
        sigma_min = low if low is not None else sigmas[-1].item()
        sigma_max = high if high is not None else sigmas[0].item()
        sigmas, timesteps = karras_schedule(base_sigmas, len(timesteps), sigma_min, sigma_max)
    return timesteps, sigmas


def init_noise_sigma(sigmas: np.ndarray, spacing: str) -> float:
    """The initial latents' scale: the largest sigma, or sqrt(sigma^2 + 1) with leading spacing (as diffusers)."""
    max_sigma = sigmas.max()
    if spacing in ("linspace", "trailing"):
        return float(max_sigma)
    return float(np.sqrt(max_sigma**2 + F32(1.0)))


class SigmaScheduler(Scheduler):
    """Schedulers over VE noise levels: inputs scaled by 1/sqrt(sigma^2 + 1), outputs turned into x0 estimates."""

    zero_snr_floor = True
    sigmas: np.ndarray

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        self._check_index(i)
        sigma = self.sigmas[i]
        return (sample / np.sqrt(sigma**2 + F32(1.0))).astype(F32, copy=False)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        # VE form: the sample is x0 + sigma * noise.
        return (original + noise * self.sigmas[index]).astype(F32, copy=False)

    def predict_original(self, model_output: np.ndarray, sigma: np.float32, sample: np.ndarray) -> np.ndarray:
        # The VE form of x0: the sample is x0 + sigma * noise, the UNet saw it scaled by 1/sqrt(sigma^2 + 1).
        prediction = self.config["prediction_type"]
        if prediction == "epsilon":
            return sample - sigma * model_output
        if prediction == "v_prediction":
            return model_output * (-sigma / np.sqrt(sigma**2 + F32(1.0))) + (sample / (sigma**2 + F32(1.0)))
        return model_output


class Euler(SigmaScheduler):
    class_name = "EulerDiscreteScheduler"
    DEFAULTS = {
        **BETA_DEFAULTS,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }
    CHOICES = {**SCHEDULE_CHOICES, **SIGMA_CHOICES, "interpolation_type": ("linear",), "timestep_type": ("discrete",)}
    FIXED = {"use_exponential_sigmas": False, "use_beta_sigmas": False}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        timesteps, sigmas = interpolated_sigmas(cfg, self.alphas_cumprod, euler_timesteps(cfg, count))
        self.sigmas = np.concatenate([sigmas, [final_sigma(cfg, self.alphas_cumprod)]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)
        self.init_noise_sigma = init_noise_sigma(self.sigmas, cfg["timestep_spacing"])

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        sigma = self.sigmas[i]
        x0 = self.predict_original(model_output, sigma, sample)
        derivative = (sample - x0) / sigma
        dt = self.sigmas[i + 1] - sigma
        return (sample + derivative * dt).astype(F32, copy=False)
