"""Our numpy schedulers against diffusers' torch schedulers of the same class and config (docs/design.md, "Parity bars").

Both run a full denoising loop driven by the same deterministic fake model (each side evaluates it on its own
sample, so errors would compound if the arithmetic differed); the stochastic ones get identical injected noise.

Bars: integer timesteps identical; fractional ones (Euler with Karras sigmas) within 1e-6 relative; sigmas and
init_noise_sigma within 1e-5 relative; every step output within 1e-5 of the step's scale, the larger of the
reference's input sample and output (a step that cancels large terms, e.g. sigma = 4096 with zero terminal SNR,
cannot be more exact than float32 rounding of those terms). Bit-identity is not the bar because torch's float32
sqrt on AVX-512 CPUs is not correctly rounded (1 ulp off IEEE in ~17% of inputs), and it enters the sigma tables.
"""

from __future__ import annotations

import copy
import importlib
import inspect

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.runtime.schedulers import SHORT_NAMES, SchedulerError, make_scheduler, resolve_scheduler  # noqa: E402
from tests.runtime.scheduler_grid import Case, parametrize  # noqa: E402

SHAPE = (2, 4, 8, 8)
STEP_TOLERANCE = 1e-5
PATTERN = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)


def fake_model(sample: np.ndarray, timestep: float) -> np.ndarray:
    """A smooth, deterministic stand-in for the UNet: bounded, depends on the sample and the timestep."""
    return (0.5 * np.tanh(sample) * np.float32(np.cos(timestep / 700.0)) + 0.3 * PATTERN).astype(np.float32)


_CONSTRUCTED: dict[str, object] = {}


def reference_scheduler(case: Case, steps: int):
    """diffusers' class for ``case``, swapped in the way users do: ``Class.from_config(pipe.scheduler.config)``.

    Constructed once per case and deep-copied per step count: the KDPM2 classes' constructors run a 1000-step
    set_timesteps (0.3 s each), which would otherwise dominate the grid's time."""
    if case.id not in _CONSTRUCTED:
        config = case.config()
        source = getattr(diffusers, config["_class_name"]).from_config(config)
        ours_class, overrides = resolve_scheduler(case.name)
        target = getattr(diffusers, ours_class.class_name)
        _CONSTRUCTED[case.id] = target.from_config(source.config, **{**case.overrides, **overrides})
    scheduler = copy.deepcopy(_CONSTRUCTED[case.id])
    scheduler.set_timesteps(steps)
    return scheduler


def step_kwargs(reference, eta: float) -> dict[str, float]:
    """diffusers' pipelines pass eta to the step of the classes whose step takes it (prepare_extra_step_kwargs)."""
    return {"eta": eta} if "eta" in inspect.signature(reference.step).parameters else {}


def feed_noise(reference, noise: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Gaussian draw the reference makes comes from ``noise``, in order: randn_tensor, and DPM++ SDE's Brownian
    tree (whose increments, divided by sqrt(dt) as diffusers does, are standard normal)."""
    feed = NoiseFeed(noise)
    module = importlib.import_module(type(reference).__module__)
    if hasattr(module, "randn_tensor"):
        monkeypatch.setattr(module, "randn_tensor", feed)
    if hasattr(module, "BrownianTreeNoiseSampler"):
        monkeypatch.setattr(module, "BrownianTreeNoiseSampler", lambda x, *args, **kwargs: lambda s, t: feed(x.shape))


class NoiseFeed:
    """Replaces diffusers' randn_tensor so that it returns our pre-drawn noise, in order."""

    def __init__(self, noise: np.ndarray) -> None:
        self.noise, self.calls = noise, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        draw = torch.from_numpy(self.noise[self.calls].copy())
        self.calls += 1
        return draw


@pytest.mark.parametrize("case,steps", parametrize(), ids=lambda v: v.id if isinstance(v, Case) else f"{v}steps")
def test_scheduler_matches_diffusers(case: Case, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.overrides.get("skip_prk_steps") is False and steps < 4:
        # diffusers' PRK set_timesteps fails (numpy broadcast error) below 4 steps; ours refuses by name.
        with pytest.raises(ValueError):
            reference_scheduler(case, steps)
        with pytest.raises(SchedulerError, match="skip_prk_steps=False"):
            make_scheduler(case.name, case.config(), steps, eta=case.eta)
        return
    reference = reference_scheduler(case, steps)
    ours = make_scheduler(case.name, case.config(), steps, eta=case.eta)

    ref_timesteps = reference.timesteps.numpy()
    assert ours.timesteps.dtype == ref_timesteps.dtype
    if np.issubdtype(ref_timesteps.dtype, np.integer):
        np.testing.assert_array_equal(ours.timesteps, ref_timesteps, err_msg="timesteps differ")
    else:
        np.testing.assert_allclose(ours.timesteps, ref_timesteps, rtol=1e-6, atol=case.timestep_atol,
                                   err_msg="timesteps differ")
    if hasattr(reference, "sigmas"):
        np.testing.assert_allclose(ours.sigmas, reference.sigmas.numpy(), rtol=1e-5, atol=0, err_msg="sigmas differ")
    assert ours.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-5)
    if case.shared_sigmas:
        for table in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
            if hasattr(reference, table):
                setattr(ours, table, getattr(reference, table).numpy().copy())
        ours.init_noise_sigma = float(reference.init_noise_sigma)

    noise = np.random.default_rng(11).standard_normal((len(ours.timesteps) + 1, *SHAPE)).astype(np.float32)
    feed_noise(reference, noise, monkeypatch)
    drawn = 0

    start = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    ref_sample = torch.from_numpy(start) * reference.init_noise_sigma
    our_sample = start * np.float32(ours.init_noise_sigma)
    for i, t in enumerate(reference.timesteps):
        step_input_scale = float(ref_sample.abs().max())
        ref_input = reference.scale_model_input(ref_sample, t)
        our_input = ours.scale_model_input(our_sample, i)
        ref_output = torch.from_numpy(fake_model(ref_input.numpy(), float(t)))
        our_output = fake_model(our_input, float(ours.timesteps[i]))
        ref_sample = reference.step(ref_output, t, ref_sample, return_dict=False, **step_kwargs(reference, case.eta))[0]
        our_noise = noise[drawn] if ours.noise_at(i) else None
        drawn += our_noise is not None
        our_sample = ours.step(our_output, i, our_sample, noise=our_noise)
        assert our_sample.dtype == np.float32
        expected = ref_sample.numpy()
        # Degenerate schedules (e.g. Euler ancestral on squaredcos_cap_v2 betas) give NaN in diffusers too:
        # parity then means NaN in the same places.
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(our_sample), finite, err_msg=f"step {i}: non-finite values differ")
        if finite.any():
            scale = max(float(np.max(np.abs(expected[finite]))), step_input_scale)
            error = float(np.max(np.abs(our_sample[finite] - expected[finite])))
            assert error <= STEP_TOLERANCE * scale, f"step {i} (t={t}): max diff {error:.3e} vs scale {scale:.3e}"


MID_SCHEDULE = [(name, steps, strength) for name in SHORT_NAMES
                for steps, strength in ((10, 0.3), (10, 0.75), (25, 0.5), (4, 1.0))]


@pytest.mark.parametrize("name,steps,strength", MID_SCHEDULE, ids=lambda v: str(v))
def test_starting_mid_schedule_matches_diffusers(name: str, steps: int, strength: float,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Image-to-image: begin at the step strength gives, noise the image there with add_noise, run the rest; as
    diffusers' img2img pipelines drive a scheduler (set_begin_index where the class has it)."""
    from diffship.runtime.schedulers import start_index
    from tests.runtime.scheduler_grid import SD15, SD21

    base = SD21 if name == "unipc" else SD15
    case = Case(name, "sd21" if base is SD21 else "sd15")
    reference = reference_scheduler(case, steps)
    ours = make_scheduler(name, case.config(), steps)
    begin = start_index(steps, strength, getattr(reference, "order", 1))
    if hasattr(reference, "set_begin_index"):
        reference.set_begin_index(begin)
    ours.begin(begin)
    noise = np.random.default_rng(5).standard_normal((len(ours.timesteps) + 2, *SHAPE)).astype(np.float32)
    feed_noise(reference, noise[1:], monkeypatch)
    drawn = 1
    original = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    timesteps = reference.timesteps[begin:]
    ref_sample = reference.add_noise(torch.from_numpy(original), torch.from_numpy(noise[0]), timesteps[:1])
    our_sample = ours.add_noise(original, noise[0], begin)
    np.testing.assert_allclose(our_sample, ref_sample.numpy(), rtol=1e-5, atol=1e-5, err_msg="add_noise differs")
    for offset, t in enumerate(timesteps):
        i = begin + offset
        ref_input = reference.scale_model_input(ref_sample, t)
        our_input = ours.scale_model_input(our_sample, i)
        ref_sample = reference.step(torch.from_numpy(fake_model(ref_input.numpy(), float(t))), t, ref_sample,
                                    return_dict=False, **step_kwargs(reference, 0.0))[0]
        our_noise = noise[drawn] if ours.noise_at(i) else None
        drawn += our_noise is not None
        our_sample = ours.step(fake_model(our_input, float(ours.timesteps[i])), i, our_sample, noise=our_noise)
        expected = ref_sample.numpy()
        scale = max(float(np.max(np.abs(expected))), 1.0)
        error = float(np.max(np.abs(our_sample - expected)))
        assert error <= STEP_TOLERANCE * scale, f"step {i} (t={t}): max diff {error:.3e} vs scale {scale:.3e}"


MOST_STEPS = [Case(name, base) for name in SHORT_NAMES if name not in ("lcm", "tcd") for base in ("sd15", "sd21")]
"""Every scheduler at the most steps a call may ask for (LCM and TCD stop at their original_inference_steps, 50)."""


TOP_TIMESTEP_ATOL = 1e-4
TOP_SAMPLE_TOLERANCE = 1e-3
"""The bars at 999 steps, looser than the grid's: float32 rounding (torch's non-IEEE sqrt in the sigma tables) puts
fractional timesteps near t = 0 a few 1e-6 apart, and 999 steps compound the grid's per-step 1e-5 to a few 1e-5
(measured: at most 3.1e-4 of the scale, DPM++ SDE on SD 2.1). A real divergence (a wrong coefficient, a skipped step)
is orders larger. LMS on Karras sigmas: 2e-2 (measured 1.2e-3 on SD 1.5, 5.2e-3 on SD 2.1): its order-4 coefficients
integrate Lagrange polynomials through sigmas that crowd to ~1e-4 apart at 999 Karras steps, where float32 ulps of the
sigma table move the coefficients themselves."""
TOP_SAMPLE_TOLERANCES = {"lms_karras": 2e-2}


@pytest.mark.slow
@pytest.mark.parametrize("case", MOST_STEPS, ids=lambda case: case.id)
def test_scheduler_matches_diffusers_at_the_most_steps(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffship.runtime.requests import Limits

    steps = Limits().max_steps
    reference = reference_scheduler(case, steps)
    ours = make_scheduler(case.name, case.config(), steps)
    np.testing.assert_allclose(ours.timesteps, reference.timesteps.numpy(), rtol=1e-6, atol=TOP_TIMESTEP_ATOL)
    noise = np.random.default_rng(11).standard_normal((len(ours.timesteps) + 1, *SHAPE)).astype(np.float32)
    feed_noise(reference, noise, monkeypatch)
    drawn = 0
    start = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    ref_sample = torch.from_numpy(start) * reference.init_noise_sigma
    our_sample = start * np.float32(ours.init_noise_sigma)
    for i, t in enumerate(reference.timesteps):
        ref_input = reference.scale_model_input(ref_sample, t)
        ref_output = torch.from_numpy(fake_model(ref_input.numpy(), float(t)))
        ref_sample = reference.step(ref_output, t, ref_sample, return_dict=False, **step_kwargs(reference, case.eta))[0]
        our_noise = noise[drawn] if ours.noise_at(i) else None
        drawn += our_noise is not None
        our_output = fake_model(ours.scale_model_input(our_sample, i), float(ours.timesteps[i]))
        our_sample = ours.step(our_output, i, our_sample, noise=our_noise)
    expected = ref_sample.numpy()
    assert np.isfinite(expected).all() and np.isfinite(our_sample).all()
    scale = max(float(np.max(np.abs(expected))), 1.0)
    assert float(np.max(np.abs(our_sample - expected))) <= TOP_SAMPLE_TOLERANCES.get(case.name, TOP_SAMPLE_TOLERANCE) * scale


@pytest.mark.parametrize("case", [case for case in MOST_STEPS if resolve_scheduler(case.name)[0].below_train_steps],
                         ids=lambda case: case.id)
def test_where_diffusers_fails_at_train_steps_ours_refuses_by_name(case: Case) -> None:
    """At num_train_timesteps steps these classes overrun (IndexError) or repeat a timestep (NaN) in diffusers 0.42:
    ours refuses with the largest count it runs, which is also the default Limits().max_steps."""
    from diffship.runtime.requests import Limits

    reference = reference_scheduler(case, 1000)
    sample = torch.ones(SHAPE)
    try:
        for t in reference.timesteps:
            sample = reference.step(torch.full(SHAPE, 0.1), t, sample, return_dict=False)[0]
        failed = not bool(torch.isfinite(sample).all())
    except IndexError:
        failed = True
    if "karras" not in case.name:  # Karras sigmas do not repeat: refused for a uniform maximum, not for a failure
        assert failed
    with pytest.raises(SchedulerError, match="takes at most 999 steps"):
        make_scheduler(case.name, case.config(), 1000)
    assert Limits().max_steps == 999
