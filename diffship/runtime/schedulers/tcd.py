"""Trajectory Consistency Distillation sampling (Zheng et al. 2024): matches diffusers 0.42 ``TCDScheduler``.

Honours beta_schedule, trained_betas, prediction_type (epsilon, v_prediction, sample), original_inference_steps,
rescale_betas_zero_snr, and ``eta`` (the paper's gamma), which this runtime takes at construction: diffusers'
step defaults to eta=0.3, but its SD pipelines pass their own eta (default 0.0) to every step that takes one, and
that is what ``make_scheduler(..., eta=)`` stands for. Timesteps are the "skipping" schedule over
``original_inference_steps``, as LCM's, so num_inference_steps may not exceed it.

Each step maps the sample to x0 and noise, re-noises x0 to timestep s = floor((1 - eta) * t_prev), then, when
eta > 0 and it is not the last step, moves from s back up to t_prev with one standard-normal draw (so
``noise_at`` is true for every step but the last, and never with eta = 0).

Accepted with no effect, as in diffusers 0.42, whose TCD step never reads them: clip_sample, clip_sample_range,
thresholding, dynamic_thresholding_ratio, sample_max_value, set_alpha_to_one (the last step ends at train timestep
0, never past it), timestep_scaling, timestep_spacing, steps_offset. Limitations: img2img ``strength`` in the
schedule and custom timesteps are not implemented.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_SCHEDULES,
    F32,
    PREDICTION_TYPES,
    THRESHOLD_DEFAULTS,
    Scheduler,
    predicted_noise,
    predicted_original,
)
from diffship.runtime.schedulers.lcm import consistency_timesteps


class TCD(Scheduler):
    class_name = "TCDScheduler"
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
        "steps_offset": 0,
        "prediction_type": "epsilon",
        **THRESHOLD_DEFAULTS,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }
    CHOICES = {"prediction_type": PREDICTION_TYPES, "beta_schedule": BETA_SCHEDULES}

    def _schedule(self, count: int) -> None:
        self.timesteps = consistency_timesteps(self.config, count, "TCD")
        self.init_noise_sigma = 1.0
        self.stochastic = self.eta > 0 and count > 1

    def noise_at(self, i: int) -> bool:
        # diffusers draws only with eta > 0, and never at the last step, which returns the re-noised x0 as it is.
        return self.eta > 0 and i != len(self.timesteps) - 1

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        timestep = int(self.timesteps[i])
        # After the last step diffusers targets train timestep 0 (not -1), so set_alpha_to_one never applies.
        prev_timestep = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else 0
        # torch multiplies the int64 timestep by the Python float (1 - eta) in float32 before flooring.
        timestep_s = int(np.floor(F32(1.0 - self.eta) * F32(prev_timestep)))
        alpha_t = self.alphas_cumprod[timestep]
        beta_t = F32(1.0) - alpha_t
        alpha_prev = self.alphas_cumprod[prev_timestep]
        alpha_s = self.alphas_cumprod[timestep_s]
        beta_s = F32(1.0) - alpha_s
        prediction = self.config["prediction_type"]
        x0 = predicted_original(prediction, model_output, sample, np.sqrt(alpha_t), np.sqrt(beta_t))
        epsilon = predicted_noise(prediction, model_output, sample, np.sqrt(alpha_t), np.sqrt(beta_t))
        noised = np.sqrt(alpha_s) * x0 + np.sqrt(beta_s) * epsilon
        if not self.noise_at(i):
            return noised.astype(F32, copy=False)
        draw = self._draw(noise, sample.shape)
        ratio = alpha_prev / alpha_s
        return (np.sqrt(ratio) * noised + np.sqrt(F32(1.0) - ratio) * draw).astype(F32, copy=False)
