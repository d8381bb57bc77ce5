"""DDIM: matches diffusers 0.42 ``DDIMScheduler`` as Stable Diffusion pipelines call it (eta = 0).

Honours beta_schedule (linear, scaled_linear, squaredcos_cap_v2), trained_betas, prediction_type (epsilon,
v_prediction, sample), timestep_spacing (leading, trailing, linspace), steps_offset, set_alpha_to_one, clip_sample
and clip_sample_range, rescale_betas_zero_snr. Limitations: eta is fixed at 0 (the deterministic sampler; the SD
pipelines' default), and dynamic thresholding (``thresholding: true``) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime.schedulers.common import (
    BETA_DEFAULTS,
    BETA_SCHEDULES,
    F32,
    PREDICTION_TYPES,
    SPACINGS,
    Scheduler,
    SchedulerError,
    make_alphas_cumprod,
    resolve_config,
    spaced_timesteps,
)

DEFAULTS: dict[str, Any] = {
    **BETA_DEFAULTS,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "clip_sample_range": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}
CHOICES = {"prediction_type": PREDICTION_TYPES, "timestep_spacing": SPACINGS, "beta_schedule": BETA_SCHEDULES}
FIXED = {"thresholding": False}


class DDIM(Scheduler):
    class_name = "DDIMScheduler"

    def __init__(
        self, config: Mapping[str, Any], num_inference_steps: int, generator: np.random.Generator | None = None
    ) -> None:
        super().__init__(config, num_inference_steps, generator)
        self.config = cfg = resolve_config(self.class_name, config, DEFAULTS, CHOICES, FIXED)
        train_steps = cfg["num_train_timesteps"]
        if num_inference_steps > train_steps:
            raise SchedulerError(f"num_inference_steps {num_inference_steps} exceeds num_train_timesteps {train_steps}")
        self.alphas_cumprod = make_alphas_cumprod(cfg, self.class_name)
        self.final_alpha_cumprod = F32(1.0) if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]
        spaced = spaced_timesteps(cfg["timestep_spacing"], train_steps, num_inference_steps, cfg["steps_offset"])
        self.timesteps = (spaced.round() if cfg["timestep_spacing"] == "linspace" else spaced).astype(np.int64)
        self.init_noise_sigma = 1.0
        self._stride = train_steps // num_inference_steps

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        timestep = int(self.timesteps[i])
        prev_timestep = timestep - self._stride
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_t = F32(1.0) - alpha_t
        prediction = self.config["prediction_type"]
        if prediction == "epsilon":
            x0 = (sample - np.sqrt(beta_t) * model_output) / np.sqrt(alpha_t)
            epsilon = model_output
        elif prediction == "sample":
            x0 = model_output
            epsilon = (sample - np.sqrt(alpha_t) * x0) / np.sqrt(beta_t)
        else:
            x0 = np.sqrt(alpha_t) * sample - np.sqrt(beta_t) * model_output
            epsilon = np.sqrt(alpha_t) * model_output + np.sqrt(beta_t) * sample
        if self.config["clip_sample"]:
            limit = F32(self.config["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        direction = np.sqrt(F32(1.0) - alpha_prev) * epsilon
        return (np.sqrt(alpha_prev) * x0 + direction).astype(F32, copy=False)
