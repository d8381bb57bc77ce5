"""Linear multistep (LMS, Karras et al. 2022 after Crowson's k-diffusion): matches diffusers 0.42
``LMSDiscreteScheduler``.

``lms`` is this class at its defaults; ``lms_karras`` adds ``use_karras_sigmas``. Honours beta_schedule,
trained_betas, prediction_type (epsilon, v_prediction, sample), timestep_spacing (leading, trailing, linspace),
steps_offset, use_karras_sigmas (between the first and last interpolated sigma; this class reads no
sigma_min/sigma_max, as in diffusers). Timesteps are float32 and may be fractional. The order is 4, diffusers'
default for ``step(order=...)``, which SD pipelines never pass.

The coefficients are integrals of Lagrange basis polynomials in sigma over each step. diffusers evaluates them
with scipy's adaptive quadrature (relative tolerance 1e-4, integrand in float32); they are polynomials of degree
at most 3, so here they are integrated exactly with numpy polynomials in float64. The two agree to float32
rounding of the integrand, far inside the parity bar.

Limitations: exponential and beta sigma schedules are refused. Multistep: keeps the last four derivatives, so step
in order. Like diffusers, the order is taken from the step index, not from the steps taken: a run begun mid-schedule
(image-to-image) uses the higher-order coefficients of its first derivatives from its first step on.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import Polynomial

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
)
from diffship.runtime.schedulers.euler import SigmaScheduler, euler_timesteps, init_noise_sigma, interpolated_sigmas

LMS_ORDER = 4


class LMS(SigmaScheduler):
    class_name = "LMSDiscreteScheduler"
    DEFAULTS = {
        **BETA_DEFAULTS,
        "use_karras_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    CHOICES = {**SCHEDULE_CHOICES, "use_karras_sigmas": (False, True)}
    FIXED = {"use_exponential_sigmas": False, "use_beta_sigmas": False}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        timesteps, sigmas = interpolated_sigmas(cfg, self.alphas_cumprod, euler_timesteps(cfg, count))
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)
        self.init_noise_sigma = init_noise_sigma(self.sigmas, cfg["timestep_spacing"])
        self._derivatives: list[np.ndarray] = []
        """d sample / d sigma of the last ``LMS_ORDER`` steps, newest first."""

    def coefficient(self, order: int, i: int, j: int) -> float:
        """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial of node sigma_(i-j) on the nodes
        sigma_i, ..., sigma_(i-order+1): the weight of the derivative taken ``j`` steps ago."""
        nodes = [float(self.sigmas[i - k]) for k in range(order)]
        basis = Polynomial([1.0])
        for k, node in enumerate(nodes):
            if k != j:
                basis = basis * Polynomial([-node, 1.0]) / (nodes[j] - node)
        antiderivative = basis.integ()
        return float(antiderivative(float(self.sigmas[i + 1])) - antiderivative(float(self.sigmas[i])))

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        sigma = self.sigmas[i]
        x0 = self.predict_original(model_output, sigma, sample)
        self._derivatives = [(sample - x0) / sigma, *self._derivatives][:LMS_ORDER]
        order = min(i + 1, LMS_ORDER)
        # diffusers pairs the coefficients with the derivatives it has, so fewer than ``order`` after a mid-schedule
        # begin; torch multiplies a float32 tensor by a Python float in float32.
        terms = [F32(self.coefficient(order, i, j)) * d for j, d in enumerate(self._derivatives[:order])]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        self.steps_taken += 1
        return (sample + total).astype(F32, copy=False)
