"""The scheduler interface, checked the same way for every scheduler (one mixin, one subclass each): shape and dtype
kept, timesteps as documented, step order enforced where a history is kept, injected noise making stochastic
samplers deterministic, and the config surviving a round trip. Parity with diffusers is test_scheduler_parity.py's."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from diffship.runtime.schedulers import SHORT_NAMES, Scheduler, SchedulerError, make_scheduler, resolve_scheduler
from tests.runtime.scheduler_grid import SD15

SHAPE = (2, 4, 8, 8)


class SchedulerConformance:
    name: ClassVar[str]
    keeps_history: ClassVar[bool] = False
    timestep_rise: ClassVar[float] = 0.0
    """How far a timestep may lie above the one before it."""
    config: ClassVar[dict[str, Any]] = SD15

    def make(self, steps: int = 6, generator: np.random.Generator | None = None) -> Scheduler:
        return make_scheduler(self.name, self.config, steps, generator)

    def run(self, scheduler: Scheduler, noise_seed: int | None = 0) -> np.ndarray:
        rng = np.random.default_rng(1)
        sample = rng.standard_normal(SHAPE).astype(np.float32) * np.float32(scheduler.init_noise_sigma)
        noise_rng = np.random.default_rng(noise_seed) if noise_seed is not None else None
        for i in range(len(scheduler.timesteps)):
            model_input = scheduler.scale_model_input(sample, i)
            model_output = np.tanh(model_input) * 0.5  # a stand-in model: depends on its input only
            noise = noise_rng.standard_normal(SHAPE).astype(np.float32) if noise_rng is not None else None
            sample = scheduler.step(model_output, i, sample, noise=noise)
        return sample

    def test_steps_keep_shape_and_float32(self) -> None:
        scheduler = self.make()
        sample = np.ones(SHAPE, np.float32)
        scaled = scheduler.scale_model_input(sample, 0)
        stepped = scheduler.step(np.zeros(SHAPE, np.float32), 0, sample, noise=np.zeros(SHAPE, np.float32))
        assert scaled.shape == stepped.shape == SHAPE
        assert scaled.dtype == stepped.dtype == np.float32

    def test_timesteps_are_descending_and_within_training(self) -> None:
        scheduler = self.make(steps=10)
        timesteps = np.asarray(scheduler.timesteps, dtype=np.float64)
        assert len(scheduler) == len(timesteps) >= 10
        assert np.all(np.diff(timesteps) <= self.timestep_rise) and 0 <= timesteps.min() and timesteps.max() < 1000
        assert scheduler.init_noise_sigma >= 1.0

    def test_step_order_is_enforced_only_where_history_is_kept(self) -> None:
        scheduler = self.make()
        sample = np.ones(SHAPE, np.float32)
        if self.keeps_history:
            with pytest.raises(SchedulerError, match="step in order"):
                scheduler.step(np.zeros(SHAPE, np.float32), 1, sample, noise=np.zeros(SHAPE, np.float32))
        else:
            scheduler.step(np.zeros(SHAPE, np.float32), 1, sample, noise=np.zeros(SHAPE, np.float32))
        with pytest.raises(SchedulerError, match="outside"):
            scheduler.step(np.zeros(SHAPE, np.float32), len(scheduler.timesteps), sample)

    def test_injected_noise_makes_runs_repeatable(self) -> None:
        first = self.run(self.make(generator=np.random.default_rng(7)))
        second = self.run(self.make(generator=np.random.default_rng(8)))  # another generator, same injected noise
        assert first.tobytes() == second.tobytes()
        if self.make().stochastic:
            other = self.run(self.make(), noise_seed=99)
            assert not np.allclose(first, other)
            drawn = self.run(self.make(generator=np.random.default_rng(7)), noise_seed=None)
            assert self.run(self.make(generator=np.random.default_rng(7)), noise_seed=None).tobytes() == drawn.tobytes()

    def test_config_round_trips(self) -> None:
        scheduler = self.make()
        scheduler_class, _ = resolve_scheduler(self.name)
        rebuilt = scheduler_class(scheduler.config, scheduler.num_inference_steps, eta=scheduler.eta)
        assert rebuilt.config == scheduler.config
        np.testing.assert_array_equal(rebuilt.timesteps, scheduler.timesteps)
        assert self.run(rebuilt).tobytes() == self.run(self.make()).tobytes()


class TestDDIM(SchedulerConformance):
    name = "ddim"


class TestPNDM(SchedulerConformance):
    name = "pndm"
    keeps_history = True


class TestEuler(SchedulerConformance):
    name = "euler"


class TestEulerAncestral(SchedulerConformance):
    name = "euler_a"


class TestDPMSolver(SchedulerConformance):
    name = "dpmpp_2m"
    keeps_history = True


class TestDPMSolverKarras(SchedulerConformance):
    name = "dpmpp_2m_karras"
    keeps_history = True


class TestLCM(SchedulerConformance):
    name = "lcm"


class TestUniPC(SchedulerConformance):
    name = "unipc"
    keeps_history = True


class TestEulerKarras(SchedulerConformance):
    name = "euler_karras"


class TestHeun(SchedulerConformance):
    name = "heun"
    keeps_history = True


class TestLMS(SchedulerConformance):
    name = "lms"
    keeps_history = True


class TestLMSKarras(SchedulerConformance):
    name = "lms_karras"
    keeps_history = True


class TestKDPM2(SchedulerConformance):
    name = "dpm2"
    keeps_history = True


class TestKDPM2Karras(SchedulerConformance):
    name = "dpm2_karras"
    keeps_history = True


class TestKDPM2Ancestral(SchedulerConformance):
    name = "dpm2_a"
    keeps_history = True


class TestKDPM2AncestralKarras(SchedulerConformance):
    name = "dpm2_a_karras"
    keeps_history = True
    # Its midpoint sigmas equal the next step's (sigma_down^2 = sigma_next^4 / sigma^2), but diffusers rounds the
    # steps' Karras timesteps and not the midpoints', so a midpoint can lie up to 0.5 (plus float32 noise) below.
    timestep_rise = 1.0


class TestDPMSolverSDEMultistep(SchedulerConformance):
    name = "dpmpp_2m_sde"
    keeps_history = True


class TestDPMSolverSDEMultistepKarras(SchedulerConformance):
    name = "dpmpp_2m_sde_karras"
    keeps_history = True


class TestDPMSolverSDE(SchedulerConformance):
    name = "dpmpp_sde"
    keeps_history = True


class TestDPMSolverSDEKarras(SchedulerConformance):
    name = "dpmpp_sde_karras"
    keeps_history = True


class TestDEIS(SchedulerConformance):
    name = "deis"
    keeps_history = True


class TestTCD(SchedulerConformance):
    name = "tcd"


class TestPNDMRungeKutta(SchedulerConformance):
    name = "pndm"
    keeps_history = True
    config = {**SD15, "skip_prk_steps": False}


class TestDDIMWithEta(SchedulerConformance):
    name = "ddim"

    def make(self, steps: int = 6, generator: np.random.Generator | None = None) -> Scheduler:
        return make_scheduler(self.name, self.config, steps, generator, eta=0.5)


class TestTCDWithEta(SchedulerConformance):
    name = "tcd"

    def make(self, steps: int = 6, generator: np.random.Generator | None = None) -> Scheduler:
        return make_scheduler(self.name, self.config, steps, generator, eta=0.3)


def test_every_scheduler_has_a_conformance_class() -> None:
    covered = {cls.name for cls in SchedulerConformance.__subclasses__()}
    assert covered == set(SHORT_NAMES)
