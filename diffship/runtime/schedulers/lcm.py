"""Latent Consistency Model sampling: matches diffusers 0.42 ``LCMScheduler``.

Honours beta_schedule, trained_betas, prediction_type (epsilon, v_prediction, sample), original_inference_steps,
timestep_scaling, set_alpha_to_one, clip_sample and clip_sample_range, dynamic thresholding (thresholding,
dynamic_thresholding_ratio, sample_max_value; it takes precedence over clip_sample, as in diffusers),
rescale_betas_zero_snr. Timesteps are the LCM "skipping" schedule over ``original_inference_steps``
(timestep_spacing and steps_offset do not apply, as in diffusers), so num_inference_steps may not exceed
original_inference_steps. Stochastic: every step but the last consumes one standard-normal draw. Limitations: img2img ``strength`` and custom timesteps are not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_SCHEDULES,
    F32,
    PREDICTION_TYPES,
    THRESHOLD_DEFAULTS,
    Scheduler,
    SchedulerError,
    predicted_original,
    threshold_sample,
)

SIGMA_DATA = 0.5


def consistency_timesteps(config: Mapping[str, Any], count: int, label: str) -> np.ndarray:
    """``count`` int64 timesteps picked evenly from the ``original_inference_steps`` the model was distilled on (LCM's
    and TCD's schedule)."""
    train_steps, original_steps = config["num_train_timesteps"], config["original_inference_steps"]
    if original_steps > train_steps:
        raise SchedulerError(f"original_inference_steps {original_steps} exceeds num_train_timesteps {train_steps}")
    if count > original_steps:
        raise SchedulerError(f"{label} takes at most original_inference_steps={original_steps} steps, got {count}")
    origin = np.asarray(list(range(1, original_steps + 1))) * (train_steps // original_steps) - 1
    origin = origin[::-1].copy()
    picks = np.floor(np.linspace(0, len(origin), num=count, endpoint=False)).astype(np.int64)
    return origin[picks].astype(np.int64)


class LCM(Scheduler):
    class_name = "LCMScheduler"
    stochastic = True
    DEFAULTS = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "prediction_type": "epsilon",
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
        **THRESHOLD_DEFAULTS,
    }
    CHOICES = {"prediction_type": PREDICTION_TYPES, "beta_schedule": BETA_SCHEDULES}

    def _schedule(self, count: int) -> None:
        self.timesteps = consistency_timesteps(self.config, count, "LCM")
        self.init_noise_sigma = 1.0

    def _boundary_scalings(self, timestep: int) -> tuple[np.float32, np.float32]:
        scaled = F32(timestep) * F32(self.config["timestep_scaling"])
        c_skip = F32(SIGMA_DATA**2) / (scaled**2 + F32(SIGMA_DATA**2))
        c_out = scaled / np.sqrt(scaled**2 + F32(SIGMA_DATA**2))
        return c_skip, c_out

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        timestep = int(self.timesteps[i])
        prev_timestep = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else timestep
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod()
        beta_prev = F32(1.0) - alpha_prev
        c_skip, c_out = self._boundary_scalings(timestep)
        x0 = predicted_original(self.config["prediction_type"], model_output, sample, np.sqrt(alpha_t),
                                np.sqrt(F32(1.0) - alpha_t))
        if self.config["thresholding"]:
            x0 = threshold_sample(x0, self.config)
        elif self.config["clip_sample"]:
            limit = F32(self.config["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        denoised = c_out * x0 + c_skip * sample
        if i == self.num_inference_steps - 1:
            return denoised.astype(F32, copy=False)
        draw = self._draw(noise, sample.shape)
        return (np.sqrt(alpha_prev) * denoised + np.sqrt(beta_prev) * draw).astype(F32, copy=False)
