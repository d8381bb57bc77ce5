"""Scheduler configuration handling: unsupported values are refused by name, never silently changed."""

from __future__ import annotations

import re

import numpy as np
import pytest

from diffship.runtime.schedulers import (
    NOT_IMPLEMENTED,
    WEB_UI_NAMES,
    SchedulerError,
    UnsupportedConfigError,
    make_scheduler,
    scheduler_names,
)
from tests.runtime.scheduler_grid import SD15, SD21

UNSUPPORTED = [
    ("ddim", "prediction_type", "flow_prediction"),
    ("ddim", "timestep_spacing", "karras"),
    ("ddim", "beta_schedule", "sigmoid"),
    ("pndm", "prediction_type", "sample"),
    ("euler", "use_exponential_sigmas", True),
    ("euler", "use_beta_sigmas", True),
    ("euler", "interpolation_type", "log_linear"),
    ("euler", "timestep_type", "continuous"),
    ("euler", "final_sigmas_type", "sigma_max"),
    ("euler_a", "prediction_type", "sample"),
    ("dpmpp_2m", "algorithm_type", "sde-dpmsolver"),
    ("dpmpp_2m", "algorithm_type", "dpmsolver"),
    ("dpmpp_sde", "prediction_type", "sample"),
    ("dpmpp_sde", "noise_sampler_seed", 42),
    ("dpmpp_sde", "use_exponential_sigmas", True),
    ("dpmpp_sde_karras", "use_beta_sigmas", True),
    ("dpmpp_2m", "use_lu_lambdas", True),
    ("dpmpp_2m", "variance_type", "learned_range"),
    ("dpmpp_2m", "solver_order", 4),
    ("dpmpp_2m_karras", "use_flow_sigmas", True),
    ("lcm", "prediction_type", "x0"),
    ("unipc", "solver_p", "DDIMScheduler"),
    ("unipc", "use_flow_sigmas", True),
    ("unipc", "solver_order", 5),
    ("unipc", "solver_type", "bh3"),
    ("lms", "use_exponential_sigmas", True),
    ("lms_karras", "use_beta_sigmas", True),
    ("lms", "prediction_type", "flow_prediction"),
    ("deis", "prediction_type", "flow_prediction"),
    ("deis", "use_flow_sigmas", True),
    ("deis", "solver_order", 4),
    ("deis", "algorithm_type", "sde-dpmsolver++"),
    ("deis", "solver_type", "bh3"),
    ("tcd", "prediction_type", "flow_prediction"),
    ("heun", "use_exponential_sigmas", True),
    ("heun", "beta_schedule", "exp"),
    ("dpm2", "prediction_type", "sample"),
    ("dpm2_a", "prediction_type", "sample"),
    ("dpm2_a_karras", "use_beta_sigmas", True),
]


@pytest.mark.parametrize("name,key,value", UNSUPPORTED, ids=lambda v: str(v))
def test_make_scheduler_refuses_unsupported_value_by_name(name: str, key: str, value: object) -> None:
    with pytest.raises(UnsupportedConfigError) as raised:
        make_scheduler(name, {**SD15, key: value}, 10)
    assert key in str(raised.value) and repr(value) in str(raised.value)


def test_make_scheduler_lists_known_names_for_unknown_one() -> None:
    with pytest.raises(SchedulerError) as raised:
        make_scheduler("huen", SD15, 10)
    assert "unknown scheduler 'huen'" in str(raised.value)
    for name in scheduler_names():
        assert name in str(raised.value)


def test_make_scheduler_uses_config_class_when_name_is_none() -> None:
    assert type(make_scheduler(None, SD15, 10)).class_name == "PNDMScheduler"


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_make_scheduler_rejects_bad_step_counts(steps: object) -> None:
    with pytest.raises(SchedulerError, match="num_inference_steps"):
        make_scheduler("ddim", SD15, steps)  # type: ignore[arg-type]


def test_lcm_rejects_more_steps_than_original_inference_steps() -> None:
    with pytest.raises(SchedulerError, match="original_inference_steps"):
        make_scheduler("lcm", SD15, 51)


@pytest.mark.parametrize("name", ["pndm", "dpmpp_2m", "unipc"])
def test_multistep_scheduler_requires_steps_in_order(name: str) -> None:
    scheduler = make_scheduler(name, SD15, 10)
    sample = np.ones((1, 4, 8, 8), np.float32)
    scheduler.step(sample, 0, sample)
    with pytest.raises(SchedulerError, match="expected step 1, got 3"):
        scheduler.step(sample, 3, sample)


@pytest.mark.parametrize("name", ["euler_a", "lcm"])
def test_stochastic_scheduler_draws_from_its_generator_reproducibly(name: str) -> None:
    sample = np.ones((1, 4, 8, 8), np.float32)

    def run(seed: int) -> np.ndarray:
        scheduler = make_scheduler(name, SD15, 4, generator=np.random.default_rng(seed))
        latents = sample
        for i in range(len(scheduler.timesteps)):
            latents = scheduler.step(0.1 * latents, i, latents)
        return latents

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_stochastic_scheduler_without_noise_or_generator_says_so() -> None:
    scheduler = make_scheduler("euler_a", SD15, 4)
    sample = np.ones((1, 4, 8, 8), np.float32)
    with pytest.raises(SchedulerError, match="stochastic"):
        scheduler.step(sample, 0, sample)


@pytest.mark.parametrize("overrides", [{"solver_type": "bh1"}, {"predict_x0": False}], ids=str)
def test_unipc_refuses_configs_whose_last_step_is_nan_in_diffusers(overrides: dict) -> None:
    """The refusal stands only while diffusers really returns NaN for it: if diffusers fixes it, lift ours."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    config = {**SD15, **overrides, "final_sigmas_type": "zero"}
    reference = diffusers.UniPCMultistepScheduler.from_config(config)
    reference.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    for timestep in reference.timesteps:
        sample = reference.step(0.1 * torch.randn(1, 4, 8, 8, generator=generator), timestep, sample).prev_sample
    assert not torch.isfinite(sample).all(), "diffusers' last UniPC step is finite now: lift the refusal"

    with pytest.raises(UnsupportedConfigError, match=r"final_sigmas_type='zero' makes the last step NaN"):
        make_scheduler("unipc", config, 10)
    sigma_min = make_scheduler("unipc", {**config, "final_sigmas_type": "sigma_min"}, 10)
    assert sigma_min.sigmas[-1] > 0


def test_pndm_refuses_more_steps_than_training_had() -> None:
    # diffusers degenerates to one repeated timestep there; refused, as DDIM refuses.
    with pytest.raises(SchedulerError, match="num_inference_steps 1001 exceeds num_train_timesteps 1000"):
        make_scheduler("pndm", SD15, 1001)


@pytest.mark.parametrize("web_ui_name", list(WEB_UI_NAMES))
def test_web_ui_names_give_the_diffusers_scheduler_of_diffusers_own_table(web_ui_name: str) -> None:
    # diffusers' scheduler overview maps AUTOMATIC1111's names to its classes; the Karras ones add use_karras_sigmas.
    diffusers = pytest.importorskip("diffusers")
    ours = make_scheduler(web_ui_name, SD15, 10)
    same = make_scheduler(web_ui_name.upper(), SD15, 10)
    overrides: dict[str, object] = {"use_karras_sigmas": True} if web_ui_name.endswith("Karras") else {}
    if web_ui_name.startswith("DPM++ 2M SDE"):
        overrides["algorithm_type"] = "sde-dpmsolver++"
    theirs = getattr(diffusers, ours.class_name).from_config({**SD15, **overrides})
    theirs.set_timesteps(10)
    assert {key: theirs.config[key] for key in overrides} == {key: ours.config[key] for key in overrides}
    reference = theirs.timesteps.numpy()
    if np.issubdtype(reference.dtype, np.integer):
        assert np.array_equal(ours.timesteps, reference)
    else:  # Karras timesteps: torch's float32 sqrt is 1 ulp off in places (see test_scheduler_parity.py)
        np.testing.assert_allclose(ours.timesteps, reference, rtol=1e-6, atol=0)
    assert np.array_equal(ours.timesteps, same.timesteps)


@pytest.mark.parametrize("name", ["DPM fast", "dpm++ 2s a", "DPMSolverSinglestepScheduler"])
def test_names_not_implemented_are_refused_by_name(name: str) -> None:
    with pytest.raises(SchedulerError, match=re.escape(f"scheduler {name!r} (")) as raised:
        make_scheduler(name, SD15, 10)
    assert "is not implemented in this runtime" in str(raised.value)
    assert set(NOT_IMPLEMENTED).isdisjoint(scheduler_names())


def test_tcd_draws_only_with_eta() -> None:
    assert not make_scheduler("tcd", SD15, 4).stochastic
    scheduler = make_scheduler("tcd", SD15, 4, eta=0.3)
    assert scheduler.stochastic and [scheduler.noise_at(i) for i in range(4)] == [True, True, True, False]


def test_pndm_runge_kutta_needs_four_steps() -> None:
    # diffusers' set_timesteps fails with a numpy broadcast error below 4 steps in PRK mode; refused by name here.
    with pytest.raises(SchedulerError, match=r"skip_prk_steps=False .* needs num_inference_steps >= 4, got 3"):
        make_scheduler("pndm", {**SD15, "skip_prk_steps": False}, 3)


def test_pndm_runge_kutta_refuses_to_start_mid_schedule() -> None:
    scheduler = make_scheduler("pndm", {**SD15, "skip_prk_steps": False}, 10)
    with pytest.raises(UnsupportedConfigError, match="skip_prk_steps=False cannot start mid-schedule"):
        scheduler.begin(3)
    scheduler.begin(0)


DDIM_ROUNDING = 5e-4
"""The most float32 rounding adds to a zero-SNR DDIM step at eta = 1 here: its direction term is sqrt(1 - alpha_prev -
sigma**2) * epsilon, exactly 0, where the sum rounds to at most a few float32 ulps of 1 (sqrt: <= 4.3e-4) and
|epsilon| = 1 (v-prediction on a sample of ones at alpha_t = 0)."""


@pytest.mark.parametrize("steps", range(2, 12))
def test_ddim_eta_one_on_zero_snr_is_finite_and_agrees_with_diffusers_wherever_diffusers_is(steps: int) -> None:
    """The clamp's only departure: where the rounding leaves a negative sum, diffusers' step is NaN (on some hosts and
    step counts, not others: it depends on the CPU's float rounding) and ours is the exact-arithmetic step."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    config = {**SD21, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    reference = diffusers.DDIMScheduler.from_config(config)
    reference.set_timesteps(steps)
    sample = torch.ones(1, 4, 8, 8)
    theirs = reference.step(0.1 * sample, reference.timesteps[0], sample, eta=1.0,
                            variance_noise=torch.zeros_like(sample))
    ones = np.ones((1, 4, 8, 8), np.float32)
    ours = make_scheduler("ddim", config, steps, eta=1.0).step(0.1 * ones, 0, ones, noise=np.zeros_like(ones))
    assert np.isfinite(ours).all()
    # In exact arithmetic the step is sqrt(alpha_prev) * x0 (no direction term, no noise); diffusers' x0 is finite.
    alpha_prev = float(reference.alphas_cumprod[int(reference.timesteps[1])])
    exact = np.sqrt(alpha_prev) * theirs.pred_original_sample.numpy()
    np.testing.assert_allclose(ours, exact, rtol=0, atol=DDIM_ROUNDING)
    reached = theirs.prev_sample.numpy()
    finite = np.isfinite(reached)
    np.testing.assert_allclose(ours[finite], reached[finite], rtol=0, atol=2 * DDIM_ROUNDING)


def test_thresholding_ratio_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(SchedulerError, match="dynamic_thresholding_ratio must lie between 0 and 1, got 1.5"):
        make_scheduler("ddim", {**SD15, "thresholding": True, "dynamic_thresholding_ratio": 1.5}, 10)
