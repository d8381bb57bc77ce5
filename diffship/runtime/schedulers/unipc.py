"""UniPC multistep predictor-corrector (Zhao et al. 2023): matches diffusers 0.42 ``UniPCMultistepScheduler``.

Honours beta_schedule, trained_betas, prediction_type (epsilon, v_prediction, sample), predict_x0, solver_type
(bh1, bh2; midpoint/heun/logrho are read as bh2, as diffusers does), solver_order (1-3), lower_order_final,
disable_corrector, use_karras_sigmas with sigma_min/sigma_max, timestep_spacing (leading, trailing, linspace),
steps_offset, final_sigmas_type (zero, sigma_min), rescale_betas_zero_snr, dynamic thresholding (thresholding,
dynamic_thresholding_ratio, sample_max_value: applied to the x0 prediction, so with predict_x0=True only; with
predict_x0=False diffusers ignores it, and so do we). Limitations: an external predictor (``solver_p``),
exponential/beta/flow sigmas and dynamic shifting are refused; so are bh1 and predict_x0=False with
final_sigmas_type zero, whose last step is NaN in diffusers. Multistep: step in order.
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
    THRESHOLD_DEFAULTS,
    UNSUPPORTED_SIGMAS,
    MultistepSigmaScheduler,
    UnsupportedConfigError,
    alpha_sigma,
    final_sigma,
    karras_schedule,
    multistep_timesteps,
    predicted_noise,
    predicted_original,
    threshold_sample,
    train_sigmas,
)


def _refuse_nan_final_step(cfg: Mapping[str, Any]) -> None:
    """Refuse the configs whose last step multiplies an infinite log-SNR step by zero.

    With ``final_sigmas_type="zero"`` the last step has h = inf; B(h) = h (bh1) or phi_1(h) in the noise
    parameterisation (predict_x0=False) is then infinite and meets a zero factor, so diffusers 0.42 returns NaN
    latents (a black image) for every such run. Failing here says why instead of handing back NaN.
    """
    if cfg["final_sigmas_type"] != "zero":
        return
    culprits = [text for text, applies in (("solver_type='bh1'", cfg["solver_type"] == "bh1"),
                                           ("predict_x0=False", not cfg["predict_x0"])) if applies]
    if culprits:
        culprit = " and ".join(culprits)
        raise UnsupportedConfigError(
            f"UniPCMultistepScheduler: {culprit} with final_sigmas_type='zero' makes the last step NaN "
            "(diffusers does the same and returns a black image); use final_sigmas_type='sigma_min', "
            "or solver_type='bh2' with predict_x0=True"
        )


class UniPC(MultistepSigmaScheduler):
    class_name = "UniPCMultistepScheduler"
    below_train_steps = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        **THRESHOLD_DEFAULTS,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "use_karras_sigmas": False,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "sigma_min": None,
        "sigma_max": None,
    }
    CHOICES = {**SCHEDULE_CHOICES, **SIGMA_CHOICES, "solver_order": (1, 2, 3), "solver_type": ("bh1", "bh2"),
               "predict_x0": (True, False)}
    FIXED = {**UNSUPPORTED_SIGMAS, "solver_p": None, "shift_terminal": None}
    ALIASES = {"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        _refuse_nan_final_step(cfg)
        timesteps = multistep_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], count, cfg["steps_offset"])
        base_sigmas = train_sigmas(self.alphas_cumprod)
        if cfg["use_karras_sigmas"]:
            sigma_min = cfg["sigma_min"] if cfg["sigma_min"] is not None else base_sigmas[0].item()
            sigma_max = cfg["sigma_max"] if cfg["sigma_max"] is not None else base_sigmas[-1].item()
            sigmas, timesteps = karras_schedule(base_sigmas, count, sigma_min, sigma_max)
            timesteps = timesteps.round()
            last = sigmas[-1] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(base_sigmas)), base_sigmas)
            last = final_sigma(cfg, self.alphas_cumprod)
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.init_noise_sigma = 1.0
        self._outputs: list[np.ndarray] = []
        """Converted model outputs of the last ``solver_order`` steps, oldest first."""
        self._last_sample: np.ndarray | None = None
        self._last_order = 0

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        cfg = self.config
        converted = self._convert(model_output, sample, self.sigmas[i])
        if i > 0 and (i - 1) not in cfg["disable_corrector"] and self._last_sample is not None:
            sample = self._corrector(converted, i, self._last_sample, sample, self._last_order)
        self._outputs = [*self._outputs, converted][-cfg["solver_order"] :]
        order = min(cfg["solver_order"], len(self.timesteps) - i) if cfg["lower_order_final"] else cfg["solver_order"]
        order = min(order, min(self.steps_taken, cfg["solver_order"]) + 1)
        self._last_order = order
        self._last_sample = sample
        previous = self._predictor(i, sample, order)
        self.steps_taken += 1
        return previous.astype(F32, copy=False)

    def _convert(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        alpha_t, sigma_t = alpha_sigma(sigma)
        if not self.config["predict_x0"]:
            return predicted_noise(self.config["prediction_type"], model_output, sample, alpha_t, sigma_t)
        x0 = predicted_original(self.config["prediction_type"], model_output, sample, alpha_t, sigma_t)
        # diffusers thresholds the x0 prediction before it enters the history (a no-op unless thresholding is set).
        return threshold_sample(x0, self.config)

    def _coefficients(
        self, h: np.float32, rks: list[np.float32], order: int
    ) -> tuple[np.ndarray, np.ndarray, np.float32, np.float32]:
        """The B(h) system of UniPC: matrix R of powers of r_k, right-hand side b, h*phi_1(h) and B(h)."""
        hh = -h if self.config["predict_x0"] else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - F32(1.0)
        b_h = hh if self.config["solver_type"] == "bh1" else np.expm1(hh)
        ratios = np.array([*rks, F32(1.0)], dtype=F32)
        rows, rhs = [], []
        factorial = 1
        for k in range(1, order + 1):
            rows.append(np.power(ratios, F32(k - 1)))
            rhs.append(h_phi_k * F32(factorial) / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - F32(1 / factorial)
        return np.stack(rows).astype(F32), np.array(rhs, dtype=F32), F32(h_phi_1), F32(b_h)

    def _differences(self, i: int, lambda_s0: np.float32, h: np.float32, order: int, lag: int) -> tuple[list, list]:
        """r_k and the scaled differences D1_k of the earlier outputs, for k = 1 .. order - 1."""
        m0 = self._outputs[-1]
        rks, d1s = [], []
        for k in range(1, order):
            _, _, lambda_sk = self._lambda(i - k - lag)
            rk = F32((lambda_sk - lambda_s0) / h)
            rks.append(rk)
            d1s.append((self._outputs[-(k + 1)] - m0) / rk)
        return rks, d1s

    def _predictor(self, i: int, sample: np.ndarray, order: int) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(i)
        h = F32(lambda_t - lambda_s0)
        rks, d1s = self._differences(i, lambda_s0, h, order, lag=0)
        matrix, rhs, h_phi_1, b_h = self._coefficients(h, rks, order)
        m0 = self._outputs[-1]
        correction: np.ndarray | float = 0.0
        if d1s:
            rhos = np.array([0.5], dtype=F32) if order == 2 else np.linalg.solve(matrix[:-1, :-1], rhs[:-1]).astype(F32)
            correction = _weighted_sum(rhos, d1s)
        if self.config["predict_x0"]:
            base = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
            return base - alpha_t * b_h * correction
        base = alpha_t / alpha_s0 * sample - sigma_t * h_phi_1 * m0
        return base - sigma_t * b_h * correction

    def _corrector(
        self, converted: np.ndarray, i: int, last_sample: np.ndarray, this_sample: np.ndarray, order: int
    ) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._lambda(i)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(i - 1)
        h = F32(lambda_t - lambda_s0)
        rks, d1s = self._differences(i, lambda_s0, h, order, lag=1)
        matrix, rhs, h_phi_1, b_h = self._coefficients(h, rks, order)
        rhos = np.array([0.5], dtype=F32) if order == 1 else np.linalg.solve(matrix, rhs).astype(F32)
        m0 = self._outputs[-1]
        correction = _weighted_sum(rhos[:-1], d1s) if d1s else 0.0
        d1_t = converted - m0
        if self.config["predict_x0"]:
            base = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
            return base - alpha_t * b_h * (correction + rhos[-1] * d1_t)
        base = alpha_t / alpha_s0 * last_sample - sigma_t * h_phi_1 * m0
        return base - sigma_t * b_h * (correction + rhos[-1] * d1_t)


def _weighted_sum(weights: np.ndarray, arrays: list[np.ndarray]) -> np.ndarray:
    total = weights[0] * arrays[0]
    for weight, array in zip(weights[1:], arrays[1:], strict=True):
        total = total + weight * array
    return total
