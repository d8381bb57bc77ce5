"""DDIM: matches diffusers 0.42 ``DDIMScheduler`` as Stable Diffusion pipelines call it (eta = 0).

Honours beta_schedule (linear, scaled_linear, squaredcos_cap_v2), trained_betas, prediction_type (epsilon,
v_prediction, sample), timestep_spacing (leading, trailing, linspace), steps_offset, set_alpha_to_one, clip_sample
and clip_sample_range, rescale_betas_zero_snr. Limitations: eta is fixed at 0 (the deterministic sampler; the SD
pipelines' default), and dynamic thresholding (``thresholding: true``) is refused.
"""

from __future__ import annotations

import numpy as np

from runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    Scheduler,
    SchedulerError,
    predicted_noise,
    predicted_original,
    spaced_timesteps,
)


class DDIM(Scheduler):
    class_name = "DDIMScheduler"
    DEFAULTS = {
        **BETA_DEFAULTS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    CHOICES = SCHEDULE_CHOICES
    FIXED = {"thresholding": False}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        train_steps = cfg["num_train_timesteps"]
        if count > train_steps:
            raise SchedulerError(f"num_inference_steps {count} exceeds num_train_timesteps {train_steps}")
        spaced = spaced_timesteps(cfg["timestep_spacing"], train_steps, count, cfg["steps_offset"])
        self.timesteps = (spaced.round() if cfg["timestep_spacing"] == "linspace" else spaced).astype(np.int64)
        self.init_noise_sigma = 1.0
        self._stride = train_steps // count

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        timestep = int(self.timesteps[i])
        prev_timestep = timestep - self._stride
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod()
        scale, noise_scale = np.sqrt(alpha_t), np.sqrt(F32(1.0) - alpha_t)
        prediction = self.config["prediction_type"]
        x0 = predicted_original(prediction, model_output, sample, scale, noise_scale)
        epsilon = predicted_noise(prediction, model_output, sample, scale, noise_scale)
        if self.config["clip_sample"]:
            limit = F32(self.config["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        direction = np.sqrt(F32(1.0) - alpha_prev) * epsilon
        return (np.sqrt(alpha_prev) * x0 + direction).astype(F32, copy=False)
