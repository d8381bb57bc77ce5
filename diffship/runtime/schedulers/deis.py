"""DEIS multistep (Zhang & Chen 2022, log-rho variant): matches diffusers 0.42 ``DEISMultistepScheduler``.

Honours beta_schedule, trained_betas, prediction_type (epsilon, v_prediction, sample), solver_order (1-3),
lower_order_final, thresholding with dynamic_thresholding_ratio and sample_max_value, use_karras_sigmas with
sigma_min/sigma_max, timestep_spacing (leading, trailing, linspace), steps_offset. algorithm_type is ``deis``
(dpmsolver/dpmsolver++ are read as it) and solver_type ``logrho`` (midpoint/heun/bh1/bh2 are read as it), as
diffusers does. This class has no final_sigmas_type: the last step ends at the first train timestep's sigma, or
with Karras sigmas at the last Karras sigma again (so that step returns its sample unchanged), as in diffusers.

Limitations: flow_prediction, exponential/beta/flow sigmas and dynamic shifting are refused; solver_order above 3
(which diffusers runs as third order) is refused. Karras sigmas on squaredcos_cap_v2 betas can repeat the first
timestep; diffusers then starts at the repeat (index 1) and runs out of sigmas, while we step from index 0, as
DPMSolverMultistep here does. Multistep: step in order.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    THRESHOLD_DEFAULTS,
    UNSUPPORTED_SIGMAS,
    MultistepSigmaScheduler,
    alpha_sigma,
    karras_schedule,
    multistep_timesteps,
    predicted_original,
    threshold_sample,
    train_sigmas,
)


def _ind2(t: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """At rho = t, the antiderivative (in rho) of the Lagrange basis in log rho of node b, other node c."""
    return F32(t * (-np.log(c) + np.log(t) - F32(1.0)) / (np.log(b) - np.log(c)))


def _ind3(t: np.float32, b: np.float32, c: np.float32, d: np.float32) -> np.float32:
    """The same for the third-order basis of node b, other nodes c and d."""
    log_t, log_c, log_d = np.log(t), np.log(c), np.log(d)
    numerator = t * (log_c * (log_d - log_t + F32(1.0)) - log_d * log_t + log_d + log_t**2 - F32(2.0) * log_t
                     + F32(2.0))
    return F32(numerator / ((np.log(b) - log_c) * (np.log(b) - log_d)))


class DEIS(MultistepSigmaScheduler):
    class_name = "DEISMultistepScheduler"
    below_train_steps = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        **THRESHOLD_DEFAULTS,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "algorithm_type": "deis",
        "solver_type": "logrho",
        "lower_order_final": True,
        "use_karras_sigmas": False,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "sigma_min": None,
        "sigma_max": None,
    }
    CHOICES = {**SCHEDULE_CHOICES, "use_karras_sigmas": (False, True), "solver_order": (1, 2, 3),
               "algorithm_type": ("deis",), "solver_type": ("logrho",)}
    FIXED = UNSUPPORTED_SIGMAS
    # diffusers silently maps these onto what it implements; so do we.
    ALIASES = {"algorithm_type": {"dpmsolver": "deis", "dpmsolver++": "deis"},
               "solver_type": {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"}}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        timesteps = multistep_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], count, cfg["steps_offset"])
        base_sigmas = train_sigmas(self.alphas_cumprod)
        if cfg["use_karras_sigmas"]:
            sigma_min = cfg["sigma_min"] if cfg["sigma_min"] is not None else base_sigmas[0].item()
            sigma_max = cfg["sigma_max"] if cfg["sigma_max"] is not None else base_sigmas[-1].item()
            sigmas, timesteps = karras_schedule(base_sigmas, count, sigma_min, sigma_max)
            timesteps = timesteps.round()
            last = sigmas[-1]
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(base_sigmas)), base_sigmas)
            last = base_sigmas[0]
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.init_noise_sigma = 1.0
        self._outputs: list[np.ndarray] = []
        """Converted (noise) model outputs of the last ``solver_order`` steps, oldest first."""

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        cfg, count = self.config, len(self.timesteps)
        short_schedule = cfg["lower_order_final"] and count < 15
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i])
        x0 = threshold_sample(predicted_original(cfg["prediction_type"], model_output, sample, alpha_t, sigma_t), cfg)
        # DEIS integrates the noise prediction; x0 is formed first so that thresholding applies to it.
        self._outputs = [*self._outputs, (sample - alpha_t * x0) / sigma_t][-cfg["solver_order"] :]
        warm = min(self.steps_taken, cfg["solver_order"])
        if cfg["solver_order"] == 1 or warm < 1 or (i == count - 1 and short_schedule):
            previous = self._first_order(i, sample)
        elif cfg["solver_order"] == 2 or warm < 2 or (i == count - 2 and short_schedule):
            previous = self._second_order(i, sample)
        else:
            previous = self._third_order(i, sample)
        self.steps_taken += 1
        return previous.astype(F32, copy=False)

    def _rhos(self, i: int, back: int) -> tuple[np.float32, np.float32, list[np.float32]]:
        """alpha at the target, alpha at step ``i``, and rho = sigma/alpha at the target, i, i-1, ..., i-back."""
        alphas_sigmas = [alpha_sigma(self.sigmas[index]) for index in range(i + 1, i - back - 1, -1)]
        return alphas_sigmas[0][0], alphas_sigmas[1][0], [F32(sigma / alpha) for alpha, sigma in alphas_sigmas]

    def _first_order(self, i: int, sample: np.ndarray) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s, _, lambda_s = self._lambda(i)
        h = lambda_t - lambda_s
        return alpha_t / alpha_s * sample - sigma_t * (np.exp(h) - F32(1.0)) * self._outputs[-1]

    def _second_order(self, i: int, sample: np.ndarray) -> np.ndarray:
        alpha_t, alpha_s0, (rho_t, rho_s0, rho_s1) = self._rhos(i, 1)
        m0, m1 = self._outputs[-1], self._outputs[-2]
        coef1 = _ind2(rho_t, rho_s0, rho_s1) - _ind2(rho_s0, rho_s0, rho_s1)
        coef2 = _ind2(rho_t, rho_s1, rho_s0) - _ind2(rho_s0, rho_s1, rho_s0)
        return alpha_t * (sample / alpha_s0 + coef1 * m0 + coef2 * m1)

    def _third_order(self, i: int, sample: np.ndarray) -> np.ndarray:
        alpha_t, alpha_s0, (rho_t, rho_s0, rho_s1, rho_s2) = self._rhos(i, 2)
        m0, m1, m2 = self._outputs[-1], self._outputs[-2], self._outputs[-3]
        coef1 = _ind3(rho_t, rho_s0, rho_s1, rho_s2) - _ind3(rho_s0, rho_s0, rho_s1, rho_s2)
        coef2 = _ind3(rho_t, rho_s1, rho_s2, rho_s0) - _ind3(rho_s0, rho_s1, rho_s2, rho_s0)
        coef3 = _ind3(rho_t, rho_s2, rho_s0, rho_s1) - _ind3(rho_s0, rho_s2, rho_s0, rho_s1)
        return alpha_t * (sample / alpha_s0 + coef1 * m0 + coef2 * m1 + coef3 * m2)
