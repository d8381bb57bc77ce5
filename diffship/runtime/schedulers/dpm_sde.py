"""DPM-Solver++ SDE (Karras et al. 2022's stochastic sampler with a midpoint step): matches diffusers 0.42
``DPMSolverSDEScheduler``.

``dpmpp_sde`` is this class at its defaults; ``dpmpp_sde_karras`` adds ``use_karras_sigmas``. Honours
beta_schedule, trained_betas (beta_start/beta_end default to 0.00085/0.012, diffusers' defaults for this class),
prediction_type (epsilon, v_prediction; diffusers does not implement ``sample``), timestep_spacing (leading,
trailing, linspace), steps_offset, use_karras_sigmas.

Second order, like diffusers (``order = 2``): each step is two UNet calls, so ``timesteps`` interleave each step's
timestep with the fractional timestep of its log-sigma midpoint (float64, 2 x steps - 1 of them) and ``sigmas``
holds each inner noise level twice. An even index is the first-order half (from ``sigma`` to the midpoint), the odd
index after it the second-order half that redoes the same interval from the stored sample; the last step, down to
sigma 0, is a plain Euler step. Explicit state: step in order; image-to-image begins at an even index.

Noise: diffusers draws each step's noise from a torchsde Brownian tree (``BrownianTreeNoiseSampler(sigma,
sigma_next)``, a standard-normal increment) seeded by ``noise_sampler_seed``, or at random. We do not reproduce the
tree: ``step`` takes one standard-normal draw of the sample's shape (``noise``, injected, or the Generator's next
draw) at exactly the calls where diffusers calls its noise sampler (every step but the final Euler one; see
``noise_at``). Parity with diffusers holds with injected noise (the tests and bench.reference feed diffusers' noise
sampler our draws); with the same seed, images differ from diffusers' own, whose tree is seeded separately. For that
reason ``noise_sampler_seed`` is refused rather than ignored, as are exponential and beta sigma schedules.
``rescale_betas_zero_snr`` is not a key of this class in diffusers and is ignored, as diffusers ignores it.
"""

from __future__ import annotations

import numpy as np

from diffship.runtime.schedulers.common import (
    BETA_DEFAULTS,
    F32,
    SCHEDULE_CHOICES,
    SchedulerError,
    sigma_to_t,
    spaced_timesteps,
    train_sigmas,
)
from diffship.runtime.schedulers.euler import SigmaScheduler, init_noise_sigma, interpolated_sigmas


class DPMSolverSDE(SigmaScheduler):
    class_name = "DPMSolverSDEScheduler"
    order = 2
    stochastic = True
    DEFAULTS = {
        **BETA_DEFAULTS,
        # diffusers' own defaults for this class (SD's values), unlike the other schedulers' 0.0001/0.02.
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "epsilon",
        "use_karras_sigmas": False,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    # diffusers' step raises NotImplementedError for prediction_type "sample".
    CHOICES = {**SCHEDULE_CHOICES, "prediction_type": ("epsilon", "v_prediction"), "use_karras_sigmas": (False, True)}
    # noise_sampler_seed seeds diffusers' Brownian tree, which we do not reproduce: a config that sets it asks for
    # noise we cannot give, so it is refused by name instead of silently ignored.
    FIXED = {"use_exponential_sigmas": False, "use_beta_sigmas": False, "noise_sampler_seed": None}

    def _schedule(self, count: int) -> None:
        cfg = self.config
        timesteps = spaced_timesteps(
            cfg["timestep_spacing"], cfg["num_train_timesteps"], count, cfg["steps_offset"]
        ).astype(np.float64)
        log_sigmas = np.log(train_sigmas(self.alphas_cumprod))
        timesteps, sigmas = interpolated_sigmas(cfg, self.alphas_cumprod, timesteps)
        # The second UNet call of each step sees the log-sigma midpoint of the step's interval (float64, as diffusers'
        # _second_order_timesteps).
        t = -np.log(sigmas)
        t_proposed = t[:-1] + np.diff(t) * 0.5
        midpoints = np.array([sigma_to_t(sigma, log_sigmas) for sigma in np.exp(-t_proposed)], dtype=np.float64)
        interleaved = np.empty(2 * len(timesteps) - 1, dtype=np.float64)
        interleaved[0::2], interleaved[1::2] = timesteps, midpoints
        self.timesteps = interleaved
        levels = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = np.concatenate([levels[:1], np.repeat(levels[1:-1], 2), levels[-1:]])
        self.init_noise_sigma = init_noise_sigma(self.sigmas, cfg["timestep_spacing"])
        self._first_sample: np.ndarray | None = None
        """The sample the first-order half of the current step started from; the second-order half steps from it."""

    def begin(self, index: int) -> None:
        # An odd index is the second half of a step, whose stored first-order sample an image-to-image start lacks.
        if index % 2:
            raise SchedulerError(f"{self.class_name}: begin index {index} is the second half of a step; begin at an "
                                 "even index (start_index(..., order=2) gives one)")
        super().begin(index)

    def _interval(self, i: int) -> tuple[np.float32, np.float32]:
        """The noise levels step ``i`` goes between: its own and the next for the first-order half (even ``i``); the
        same interval again, from the previous index, for the second-order half (odd ``i``)."""
        if i % 2 == 0:
            return self.sigmas[i], self.sigmas[i + 1]
        return self.sigmas[i - 1], self.sigmas[i]

    @staticmethod
    def _times(sigma: np.float32, sigma_next: np.float32) -> tuple[np.float32, np.float32, np.float32]:
        """t = -log(sigma) of both ends and of their midpoint, in float32 as diffusers' t_fn (inf at sigma 0)."""
        with np.errstate(divide="ignore"):
            t, t_next = -np.log(sigma), -np.log(sigma_next)
        return t, t_next, t + (t_next - t) * F32(0.5)

    def _input_sigma(self, i: int) -> np.float32:
        """The sigma the UNet input of call ``i`` is scaled for: the step's own, or the midpoint's (odd ``i``)."""
        if i % 2 == 0:
            return self.sigmas[i]
        return F32(np.exp(-self._times(*self._interval(i))[2]))

    def noise_at(self, i: int) -> bool:
        # diffusers calls its noise sampler at every call but the final Euler step down to sigma 0.
        return bool(self._interval(i)[1] != 0)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        self._check_index(i)
        sigma = self._input_sigma(i)
        return (sample / np.sqrt(sigma**2 + F32(1.0))).astype(F32, copy=False)

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        self._check_index(i, in_order=True)
        second_half = i % 2 == 1
        sigma, sigma_next = self._interval(i)
        t, t_next, t_proposed = self._times(sigma, sigma_next)
        x0 = self.predict_original(model_output, self._input_sigma(i), sample)
        if sigma_next == 0:
            # The last step: Euler down to sigma 0, no noise.
            derivative = (sample - x0) / sigma
            previous = sample + derivative * (sigma_next - sigma)
        else:
            if second_half:
                # The second half redoes the whole interval from the first half's starting sample, with the midpoint
                # model output; the first half goes only to the midpoint.
                assert self._first_sample is not None, "the first half of this step ran (in-order check)"
                start = self._first_sample
            else:
                start, t_next = sample, t_proposed
            sigma_from, sigma_to = np.exp(-t), np.exp(-t_next)
            sigma_up = min(sigma_to, np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
            sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
            # sigma_down rounds to 0 when sigma_to is far below sigma_from (coarse schedules): then ancestral_t is
            # inf and the step lands on x0 plus noise, as in diffusers.
            with np.errstate(divide="ignore"):
                ancestral_t = -np.log(sigma_down)
            previous = (np.exp(-ancestral_t) / np.exp(-t)) * start - np.expm1(t - ancestral_t) * x0
            # diffusers: noise_sampler(...) * s_noise * sigma_up with s_noise = 1 (pipelines never pass it).
            previous = previous + self._draw(noise, sample.shape) * sigma_up
            self._first_sample = None if second_half else sample
        self.steps_taken += 1
        return previous.astype(F32, copy=False)
