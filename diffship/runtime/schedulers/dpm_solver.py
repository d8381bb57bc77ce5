"""DPM-Solver++ multistep (Lu et al. 2022): matches diffusers 0.42 ``DPMSolverMultistepScheduler``.

``dpmpp_2m`` is this class at its defaults (second order, midpoint); ``dpmpp_2m_karras`` adds
``use_karras_sigmas``; ``dpmpp_2m_sde`` (and ``_karras``) set ``algorithm_type="sde-dpmsolver++"``. Honours
beta_schedule, trained_betas, prediction_type (epsilon, v_prediction, sample), timestep_spacing (leading, trailing,
linspace), steps_offset, algorithm_type (dpmsolver++, sde-dpmsolver++; ``deis`` is read as dpmsolver++, as diffusers
does), solver_order (1-3, for both algorithms), solver_type (midpoint, heun; bh1/bh2/logrho are read as midpoint, as
diffusers does), lower_order_final, euler_at_final, use_karras_sigmas, final_sigmas_type (zero, sigma_min),
lambda_min_clipped, rescale_betas_zero_snr, and dynamic thresholding of the x0 prediction (thresholding,
dynamic_thresholding_ratio, sample_max_value). Multistep: step in order.

``sde-dpmsolver++`` is stochastic: every step consumes one standard-normal draw of the sample's shape (``noise``,
or the Generator's next draw), the last step included (where its weight is 0 with final_sigmas_type zero), exactly
where diffusers' step calls ``randn_tensor``. Limitations: the deprecated noise-prediction algorithms ``dpmsolver``
and ``sde-dpmsolver``, Lu lambdas, exponential/beta/flow sigmas, dynamic shifting and learned variance are refused.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    SIGMA_CHOICES,
    THRESHOLD_DEFAULTS,
    UNSUPPORTED_SIGMAS,
    MultistepSigmaScheduler,
    SchedulerError,
    alpha_sigma,
    final_sigma,
    karras_schedule,
    log_snr,
    multistep_timesteps,
    predicted_original,
    threshold_sample,
    train_sigmas,
)

SDE = "sde-dpmsolver++"


class DPMSolverMultistep(MultistepSigmaScheduler):
    class_name = "DPMSolverMultistepScheduler"
    below_train_steps = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        **THRESHOLD_DEFAULTS,
    }
    CHOICES = {**SCHEDULE_CHOICES, **SIGMA_CHOICES, "solver_order": (1, 2, 3), "algorithm_type": ("dpmsolver++", SDE),
               "solver_type": ("midpoint", "heun")}
    FIXED = {**UNSUPPORTED_SIGMAS, "use_lu_lambdas": False, "variance_type": None}
    # diffusers silently maps these onto what it implements; so do we.
    ALIASES = {"algorithm_type": {"deis": "dpmsolver++"},
               "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        # A clamp limit <= 0 divides x0 by zero or flips its sign (NaN latents in diffusers): refused here, by name,
        # not mid-request. (resolve_config checks dynamic_thresholding_ratio.)
        if cfg["thresholding"] and not cfg["sample_max_value"] > 0:
            raise SchedulerError(
                f"{self.class_name}: thresholding needs sample_max_value > 0, got {cfg['sample_max_value']!r}"
            )
        self.stochastic = cfg["algorithm_type"] == SDE
        train_steps = cfg["num_train_timesteps"]
        lambdas = log_snr(np.sqrt(self.alphas_cumprod), np.sqrt(F32(1.0) - self.alphas_cumprod))
        clipped = int(np.searchsorted(lambdas[::-1], cfg["lambda_min_clipped"]))
        timesteps = multistep_timesteps(
            cfg["timestep_spacing"], train_steps, count, cfg["steps_offset"], train_steps - clipped
        )
        base_sigmas = train_sigmas(self.alphas_cumprod)
        if cfg["use_karras_sigmas"]:
            sigmas, timesteps = karras_schedule(base_sigmas, count, base_sigmas[0].item(), base_sigmas[-1].item())
            if cfg["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(base_sigmas)), base_sigmas)
        self.sigmas = np.concatenate([sigmas, [final_sigma(cfg, self.alphas_cumprod)]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.init_noise_sigma = 1.0
        self._outputs: list[np.ndarray] = []
        """Converted (x0) model outputs of the last ``solver_order`` steps, oldest first."""

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        cfg, count = self.config, len(self.timesteps)
        short_schedule = cfg["lower_order_final"] and count < 15
        first_order_final = i == count - 1 and (
            cfg["euler_at_final"] or short_schedule or cfg["final_sigmas_type"] == "zero"
        )
        second_order_final = i == count - 2 and short_schedule
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i])
        x0 = threshold_sample(predicted_original(cfg["prediction_type"], model_output, sample, alpha_t, sigma_t), cfg)
        self._outputs = [*self._outputs, x0][-cfg["solver_order"] :]
        warm = min(self.steps_taken, cfg["solver_order"])
        # diffusers draws the SDE noise before choosing the update, at every step.
        draw = self._draw(noise, sample.shape) if self.stochastic else None
        # Overflow: exp(-h) of the final step's infinite log-SNR. Divide: Karras sigmas with final_sigmas_type
        # sigma_min end on a repeated sigma (h = 0), a step of zero length whose r0 = inf weighs nothing, as in torch.
        with np.errstate(over="ignore", divide="ignore"):
            if cfg["solver_order"] == 1 or warm < 1 or first_order_final:
                previous = self._first_order(x0, i, sample, draw)
            elif cfg["solver_order"] == 2 or warm < 2 or second_order_final:
                previous = self._second_order(i, sample, draw)
            else:
                previous = self._third_order(i, sample, draw)
        self.steps_taken += 1
        return previous.astype(F32, copy=False)

    @staticmethod
    def _sde_noise(sigma_t: np.float32, h: np.float32, draw: np.ndarray) -> np.ndarray:
        """The SDE solvers' fresh-noise term, sigma_t sqrt(1 - e^(-2h)) z (0 at the final step to sigma 0)."""
        return (sigma_t * np.sqrt(F32(1.0) - np.exp(F32(-2.0) * h))) * draw

    def _first_order(self, x0: np.ndarray, i: int, sample: np.ndarray, draw: np.ndarray | None) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        _, sigma_s, lambda_s = self._lambda(i)
        h = lambda_t - lambda_s
        if draw is None:
            return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - F32(1.0))) * x0
        return (
            (sigma_t / sigma_s * np.exp(-h)) * sample
            + (alpha_t * (F32(1.0) - np.exp(F32(-2.0) * h))) * x0
            + self._sde_noise(sigma_t, h, draw)
        )

    def _second_order(self, i: int, sample: np.ndarray, draw: np.ndarray | None) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._lambda(i)
        _, _, lambda_s1 = self._lambda(i - 1)
        m0, m1 = self._outputs[-1], self._outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (F32(1.0) / r0) * (m0 - m1)
        if draw is not None:
            gain = alpha_t * (F32(1.0) - np.exp(F32(-2.0) * h))
            if self.config["solver_type"] == "midpoint":
                correction = (F32(0.5) * gain) * d1
            else:
                correction = (alpha_t * ((F32(1.0) - np.exp(F32(-2.0) * h)) / (F32(-2.0) * h) + F32(1.0))) * d1
            return (sigma_t / sigma_s0 * np.exp(-h)) * sample + gain * d0 + correction + self._sde_noise(sigma_t, h, draw)
        decay = alpha_t * (np.exp(-h) - F32(1.0))
        if self.config["solver_type"] == "midpoint":
            return (sigma_t / sigma_s0) * sample - decay * d0 - F32(0.5) * decay * d1
        return (sigma_t / sigma_s0) * sample - decay * d0 + (alpha_t * ((np.exp(-h) - F32(1.0)) / h + F32(1.0))) * d1

    def _third_order(self, i: int, sample: np.ndarray, draw: np.ndarray | None) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._lambda(i)
        _, _, lambda_s1 = self._lambda(i - 1)
        _, _, lambda_s2 = self._lambda(i - 2)
        m0, m1, m2 = self._outputs[-1], self._outputs[-2], self._outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (F32(1.0) / r0) * (m0 - m1), (F32(1.0) / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (F32(1.0) / (r0 + r1)) * (d1_0 - d1_1)
        if draw is not None:
            decay_2h = F32(1.0) - np.exp(F32(-2.0) * h)
            return (
                (sigma_t / sigma_s0 * np.exp(-h)) * sample
                + (alpha_t * decay_2h) * m0
                + (alpha_t * (decay_2h / (F32(-2.0) * h) + F32(1.0))) * d1
                + (alpha_t * ((decay_2h - F32(2.0) * h) / (F32(2.0) * h) ** 2 - F32(0.5))) * d2
                + self._sde_noise(sigma_t, h, draw)
            )
        exp_h = np.exp(-h)
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (exp_h - F32(1.0))) * m0
            + (alpha_t * ((exp_h - F32(1.0)) / h + F32(1.0))) * d1
            - (alpha_t * ((exp_h - F32(1.0) + h) / h**2 - F32(0.5))) * d2
        )
