"""The scheduler parity grid: which diffusers configs each of our schedulers is checked against.

Each case starts from a real pipeline's scheduler_config.json (SD 1.5's PNDM, SD 2.1's v-prediction DDIM) and
swaps the scheduler the way diffusers users do, ``Class.from_config(config, **overrides)``, then varies the keys
that scheduler honours. Every case runs at each of STEP_COUNTS.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parents[2] / "diffship" / "exporter" / "configs"
STEP_COUNTS = (1, 2, 3, 4, 10, 50)
"""Both sides of the step-count-dependent branches (DPM-Solver's lower-order final steps below 15, ...); 25 was
dropped for CI time: it takes no branch 10 and 50 do not."""


def base_config(preset: str) -> dict[str, Any]:
    return json.loads((CONFIGS / preset / "scheduler_config.json").read_text())


SD15 = base_config("sd15")
SD21 = base_config("sd21")


@dataclass(frozen=True)
class Case:
    name: str
    """Our short or class name, e.g. ``dpmpp_2m_karras``."""
    base: str
    """``sd15`` or ``sd21``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    eta: float = 0.0
    """diffusers' step(eta=...), passed to the classes whose step takes it (DDIM, TCD), as its pipelines do."""
    shared_sigmas: bool = False
    """Step on the reference's sigma tables (``sigmas`` compared on its own to 1e-5). For zero-terminal-SNR Euler,
    whose sigma_max = sqrt(2**24 - 1) is 4095.9998 correctly rounded but 4096 from torch's float32 sqrt; the first
    step cancels terms of that size, turning that last bit into a 1e-4 relative difference for the rest of the loop.
    And for KDPM2 ancestral (see FLOAT32_TIMESTEPS)."""
    timestep_atol: float = 0.0
    """Absolute slack on fractional timesteps, beside 1e-6 relative (see FLOAT32_TIMESTEPS)."""

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted({**self.overrides, **({"eta": self.eta} if self.eta else {})}.items()))
        return f"{self.name}[{self.base}{',' + extra if extra else ''}]"

    def config(self) -> dict[str, Any]:
        return {**(SD15 if self.base == "sd15" else SD21), **self.overrides}


PREDICTIONS = {
    "ddim": ("epsilon", "v_prediction", "sample"),
    "pndm": ("epsilon", "v_prediction"),
    "euler": ("epsilon", "v_prediction", "sample"),
    "euler_karras": ("epsilon", "v_prediction", "sample"),
    "euler_a": ("epsilon", "v_prediction"),
    "heun": ("epsilon", "v_prediction", "sample"),
    "lms": ("epsilon", "v_prediction", "sample"),
    "lms_karras": ("epsilon", "v_prediction", "sample"),
    "dpm2": ("epsilon", "v_prediction"),
    "dpm2_karras": ("epsilon", "v_prediction"),
    "dpm2_a": ("epsilon", "v_prediction"),
    "dpm2_a_karras": ("epsilon", "v_prediction"),
    "dpmpp_2m": ("epsilon", "v_prediction", "sample"),
    "dpmpp_2m_karras": ("epsilon", "v_prediction", "sample"),
    "dpmpp_2m_sde": ("epsilon", "v_prediction", "sample"),
    "dpmpp_2m_sde_karras": ("epsilon", "v_prediction", "sample"),
    "dpmpp_sde": ("epsilon", "v_prediction"),
    "dpmpp_sde_karras": ("epsilon", "v_prediction"),
    "deis": ("epsilon", "v_prediction", "sample"),
    "lcm": ("epsilon", "v_prediction", "sample"),
    "unipc": ("epsilon", "v_prediction", "sample"),
    "tcd": ("epsilon", "v_prediction", "sample"),
}
"""Every short name, with the prediction types its diffusers class implements (the grid also asserts refusals)."""
SPACINGS = ("leading", "trailing", "linspace")


KARRAS_REPEATS_FIRST = ("dpmpp_2m_karras", "dpmpp_2m_sde_karras", "dpm2_karras", "dpm2_a_karras")
FLOAT32_TIMESTEPS = {"dpm2": 1e-4, "dpm2_karras": 1e-4, "dpm2_a": 0.05, "dpm2_a_karras": 0.05}
"""Absolute slack (train-timestep units) on the KDPM2 classes' midpoint timesteps, which diffusers computes in float32
from sigma tables that carry torch's non-IEEE float32 sqrt (an ulp off in ~15% of inputs): 1e-6 relative cannot
hold near t = 0, so 1e-4 (two ulps at t = 999). KDPM2 ancestral's sigma_down = sqrt(sigma_next^2 - sigma_up^2)
cancels all but (sigma_next / sigma)^2 of its terms (1/250000 at 2 steps), turning that ulp into up to 2% of its last
midpoint sigma and 1e-2 of its timestep: 0.05, and it steps on the reference's sigma tables (shared_sigmas)."""


THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
"""Dynamic thresholding set to bite on the grid's samples."""
PRK = {"skip_prk_steps": False}
"""PNDM's Runge-Kutta warm-up: the real configs all set skip_prk_steps: true (PLMS)."""


def cases() -> list[Case]:
    return [replace(case, timestep_atol=FLOAT32_TIMESTEPS[case.name], shared_sigmas=case.name.startswith("dpm2_a"))
            if case.name in FLOAT32_TIMESTEPS else case for case in _cases()]


def _cases() -> list[Case]:
    return [*_systematic(), *SPECIFIC]


def _systematic() -> list[Case]:
    """Every scheduler from both real configs, each prediction type, spacing and beta schedule it takes."""
    grid: list[Case] = []
    for name, predictions in PREDICTIONS.items():
        # Every scheduler straight from both real configs.
        grid += [Case(name, "sd15"), Case(name, "sd21")]
        for prediction in predictions:
            grid.append(Case(name, "sd15", {"prediction_type": prediction}))
        if name != "lcm":
            for spacing in SPACINGS:
                grid.append(Case(name, "sd15", {"timestep_spacing": spacing}))
        for schedule in ("linear", "squaredcos_cap_v2"):
            if name in KARRAS_REPEATS_FIRST and schedule == "squaredcos_cap_v2":
                # Karras sigmas on this schedule repeat the first timestep from 4 steps on; diffusers then starts
                # at the repeat (index 1, or 2 for the KDPM2 classes' interleaved tables), skipping the first
                # step(s), or failing with IndexError at the last. We step from index 0.
                continue
            if name == "dpm2_a" and schedule == "squaredcos_cap_v2":
                # sigma_0 / sigma_1 > 4096 on this schedule: KDPM2 ancestral's sigma_down cancels completely at the
                # first step, and diffusers' first midpoint is float32 noise (NaN at 10 steps, off by 1.2 at 25).
                continue
            grid.append(Case(name, "sd15", {"beta_schedule": schedule, "beta_start": 0.0001, "beta_end": 0.02}))
    return grid


SPECIFIC = (
    Case("ddim", "sd15", {"set_alpha_to_one": True}),
    Case("ddim", "sd15", {"clip_sample": True, "clip_sample_range": 0.8}),
    Case("ddim", "sd15", {"steps_offset": 0}),
    Case("ddim", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    Case("ddim", "sd15", {"trained_betas": [0.0001 + i * 2e-5 for i in range(1000)]}),
    Case("pndm", "sd15", {"set_alpha_to_one": True}),
    Case("pndm", "sd15", {"trained_betas": [0.0001 + i * 2e-5 for i in range(1000)]}),
    Case("euler", "sd15", {"use_karras_sigmas": True}),
    Case("euler", "sd15", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}),
    Case("euler", "sd15", {"final_sigmas_type": "sigma_min"}),
    Case("euler", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, shared_sigmas=True),
    Case("euler", "sd15", {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}),
    Case("euler_a", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, shared_sigmas=True),
    Case("dpmpp_2m", "sd15", {"solver_order": 1}),
    Case("dpmpp_2m", "sd15", {"solver_order": 3}),
    Case("dpmpp_2m", "sd15", {"solver_type": "heun"}),
    Case("dpmpp_2m", "sd15", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    Case("dpmpp_2m", "sd15", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}),
    Case("dpmpp_2m", "sd15", {"final_sigmas_type": "sigma_min"}),
    Case("dpmpp_2m", "sd15", {"lambda_min_clipped": -5.1}),
    Case("dpmpp_2m", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    Case("dpmpp_2m_karras", "sd15", {"solver_order": 3}),
    Case("dpmpp_2m_karras", "sd15", {"final_sigmas_type": "sigma_min"}),
    Case("lcm", "sd15", {"set_alpha_to_one": True}),
    Case("lcm", "sd15", {"clip_sample": True, "clip_sample_range": 0.8}),
    Case("lcm", "sd15", {"timestep_scaling": 5.0}),
    Case("unipc", "sd15", {"solver_order": 1}),
    Case("unipc", "sd15", {"solver_order": 3}),
    Case("unipc", "sd15", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    Case("unipc", "sd15", {"predict_x0": False, "final_sigmas_type": "sigma_min"}),
    Case("unipc", "sd15", {"use_karras_sigmas": True}),
    Case("unipc", "sd15", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    Case("unipc", "sd15", {"final_sigmas_type": "sigma_min"}),
    Case("unipc", "sd15", {"disable_corrector": [0, 2]}),
    Case("unipc", "sd15", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    Case("unipc", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    Case("lms", "sd15", {"trained_betas": [0.0001 + i * 2e-5 for i in range(1000)]}),
    Case("deis", "sd15", {"solver_order": 1}),
    Case("deis", "sd15", {"solver_order": 3}),
    Case("deis", "sd15", {"lower_order_final": False}),
    Case("deis", "sd15", {"thresholding": True}),
    Case("deis", "sd15", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}),
    Case("deis", "sd15", {"use_karras_sigmas": True}),
    Case("deis", "sd15", {"use_karras_sigmas": True, "solver_order": 3}),
    Case("deis", "sd15", {"use_karras_sigmas": True, "timestep_spacing": "trailing", "solver_order": 3}),
    Case("deis", "sd15", {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}),
    Case("deis", "sd15", {"algorithm_type": "dpmsolver++", "solver_type": "midpoint"}),
    Case("tcd", "sd15", eta=0.3),
    Case("tcd", "sd15", eta=1.0),
    Case("tcd", "sd21", eta=0.3),
    Case("tcd", "sd15", {"prediction_type": "sample"}, eta=0.3),
    Case("tcd", "sd15", {"thresholding": True}, eta=0.3),  # diffusers' TCD step ignores it; so do we
    Case("tcd", "sd15", {"clip_sample": True, "clip_sample_range": 0.8}),
    Case("tcd", "sd15", {"original_inference_steps": 100}, eta=0.3),
    Case("tcd", "sd21", {"rescale_betas_zero_snr": True}, eta=0.3),
    Case("ddim", "sd15", eta=0.5),
    Case("ddim", "sd15", eta=1.0),
    Case("ddim", "sd21", eta=0.5),
    Case("ddim", "sd21", eta=1.0),
    Case("ddim", "sd15", {"prediction_type": "sample"}, eta=1.0),
    Case("ddim", "sd15", {"timestep_spacing": "trailing"}, eta=0.3),
    Case("ddim", "sd15", {"clip_sample": True, "clip_sample_range": 0.8}, eta=0.5),
    Case("ddim", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, eta=0.5),
    Case("ddim", "sd15", THRESHOLD),
    Case("ddim", "sd21", THRESHOLD),
    Case("ddim", "sd15", {**THRESHOLD, "clip_sample": True, "clip_sample_range": 0.5}),
    Case("ddim", "sd15", THRESHOLD, eta=0.5),
    Case("pndm", "sd15", PRK),
    Case("pndm", "sd21", PRK),
    Case("pndm", "sd15", {**PRK, "timestep_spacing": "trailing"}),
    Case("pndm", "sd15", {**PRK, "timestep_spacing": "linspace"}),
    Case("pndm", "sd15", {**PRK, "set_alpha_to_one": True}),
    Case("unipc", "sd15", THRESHOLD),
    Case("unipc", "sd21", THRESHOLD),
    Case("unipc", "sd15", {**THRESHOLD, "solver_order": 3}),
    Case("unipc", "sd15", {**THRESHOLD, "predict_x0": False, "final_sigmas_type": "sigma_min"}),
    Case("lcm", "sd15", THRESHOLD),
    Case("lcm", "sd21", THRESHOLD),
    Case("lcm", "sd15", {**THRESHOLD, "clip_sample": True, "clip_sample_range": 0.5}),
    Case("dpmpp_2m", "sd15", {"thresholding": True, "sample_max_value": 1.5}),
    Case("dpmpp_2m", "sd15", {"thresholding": True, "solver_order": 3, "prediction_type": "v_prediction"}),
    Case("dpmpp_2m_sde", "sd15", {"solver_order": 1}),
    Case("dpmpp_2m_sde", "sd15", {"solver_order": 3}),
    Case("dpmpp_2m_sde", "sd15", {"solver_type": "heun"}),
    Case("dpmpp_2m_sde", "sd15", {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    Case("dpmpp_2m_sde", "sd15", {"final_sigmas_type": "sigma_min"}),
    Case("dpmpp_2m_sde", "sd15", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}),
    Case("dpmpp_2m_sde", "sd15", {"lambda_min_clipped": -5.1}),
    Case("dpmpp_2m_sde", "sd15", {"thresholding": True}),
    Case("dpmpp_2m_sde", "sd15", {"thresholding": True, "sample_max_value": 2.0, "dynamic_thresholding_ratio": 0.9}),
    Case("dpmpp_2m_sde", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    Case("dpmpp_2m_sde_karras", "sd15", {"solver_order": 3}),
    Case("dpmpp_2m_sde_karras", "sd15", {"final_sigmas_type": "sigma_min"}),
    Case("dpmpp_sde", "sd15", {"trained_betas": [0.0001 + i * 2e-5 for i in range(1000)]}),
    Case("dpmpp_sde", "sd21", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    Case("dpmpp_sde_karras", "sd15", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    Case("heun", "sd15", {"use_karras_sigmas": True}),
    Case("heun", "sd15", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    Case("heun", "sd15", {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}),
    Case("heun", "sd15", {"clip_sample": True, "clip_sample_range": 0.8}),
    Case("heun", "sd15", {"trained_betas": [0.0001 + i * 2e-5 for i in range(1000)]}),
    Case("dpm2_karras", "sd15", {"sigma_min": 0.05, "sigma_max": 10.0}),
    Case("dpm2", "sd15", {"trained_betas": [0.0001 + i * 2e-5 for i in range(1000)]}),
    Case("dpm2_a_karras", "sd21", {"timestep_spacing": "trailing"}),
)
"""Configs that exercise one option each (or a pair that meets), beyond the systematic grid."""


def parametrize() -> list[tuple[Case, int]]:
    return list(itertools.product(cases(), STEP_COUNTS))
