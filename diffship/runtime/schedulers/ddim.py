"""DDIM: matches diffusers 0.42 ``DDIMScheduler``, with eta as the SD pipelines pass it to its step.

Honours beta_schedule (linear, scaled_linear, squaredcos_cap_v2), trained_betas, prediction_type (epsilon,
v_prediction, sample), timestep_spacing (leading, trailing, linspace), steps_offset, set_alpha_to_one, clip_sample
and clip_sample_range, dynamic thresholding (thresholding, dynamic_thresholding_ratio, sample_max_value; it takes
precedence over clip_sample, as in diffusers), rescale_betas_zero_snr, and eta (0: the deterministic sampler, the
SD pipelines' default; 1: DDPM's variance). Stochastic when eta > 0: every step consumes one standard-normal draw,
where diffusers' step calls randn_tensor. Limitations: ``use_clipped_model_output`` (a step argument the SD pipelines
never pass) is always False. One deliberate departure: at eta = 1 on a zero-terminal-SNR schedule, where diffusers'
first step is NaN for some step counts (float32 rounding of an exact 0, see ``step``), ours is finite.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    THRESHOLD_DEFAULTS,
    Scheduler,
    SchedulerError,
    predicted_noise,
    predicted_original,
    spaced_timesteps,
    threshold_sample,
)


class DDIM(Scheduler):
    class_name = "DDIMScheduler"
    below_train_steps = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        **THRESHOLD_DEFAULTS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    CHOICES = SCHEDULE_CHOICES

    def _schedule(self, count: int) -> None:
        cfg = self.config
        train_steps = cfg["num_train_timesteps"]
        if count > train_steps:
            raise SchedulerError(f"num_inference_steps {count} exceeds num_train_timesteps {train_steps}")
        spaced = spaced_timesteps(cfg["timestep_spacing"], train_steps, count, cfg["steps_offset"])
        self.timesteps = (spaced.round() if cfg["timestep_spacing"] == "linspace" else spaced).astype(np.int64)
        self.init_noise_sigma = 1.0
        self._stride = train_steps // count
        # diffusers' step draws fresh noise at every step (the last one included) exactly when eta > 0.
        self.stochastic = self.eta > 0

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i)
        cfg = self.config
        timestep = int(self.timesteps[i])
        prev_timestep = timestep - self._stride
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod()
        beta_t, beta_prev = F32(1.0) - alpha_t, F32(1.0) - alpha_prev
        scale, noise_scale = np.sqrt(alpha_t), np.sqrt(beta_t)
        prediction = cfg["prediction_type"]
        x0 = predicted_original(prediction, model_output, sample, scale, noise_scale)
        epsilon = predicted_noise(prediction, model_output, sample, scale, noise_scale)
        if cfg["thresholding"]:
            x0 = threshold_sample(x0, cfg)
        elif cfg["clip_sample"]:
            limit = F32(cfg["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        # sigma_t(eta) of the DDIM paper's formula 16; computed at eta = 0 too (it is then 0), as diffusers does.
        variance = (beta_prev / beta_t) * (F32(1.0) - alpha_t / alpha_prev)
        std_dev_t = F32(self.eta) * np.sqrt(variance)
        # 1 - alpha_prev - sigma_t**2 is exactly 0 at eta = 1 on a zero-SNR step (alpha_t = 0); float32 rounding
        # leaves +-6e-8 there, and where it is negative diffusers returns NaN (a black image: eta = 1 with zero
        # terminal SNR and trailing or linspace spacing, for about 2 step counts in 5). Clamping at 0, the only
        # departure from diffusers, touches negative values only: rounding noise around that exact 0.
        direction_scale = np.sqrt(np.maximum(F32(1.0) - alpha_prev - std_dev_t * std_dev_t, F32(0.0)))
        direction = direction_scale * epsilon
        previous = np.sqrt(alpha_prev) * x0 + direction
        if self.eta > 0:
            previous = previous + std_dev_t * self._draw(noise, sample.shape)
        return previous.astype(F32, copy=False)
