"""What every scheduler shares: the interface, config resolution, noise schedules, timestep spacings, sigma helpers.

Arithmetic follows diffusers' float32 torch code step for step (same operations in the same order, float32
scalars), so trajectories agree to float32 rounding. Tables diffusers builds in float64 numpy (interpolated sigmas,
Karras sigmas, sigma -> timestep) are built in float64 here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from diffship.core.errors import DiffshipError

F32 = np.float32


class SchedulerError(DiffshipError, ValueError):
    """A scheduler was asked for something it cannot do (unsupported config value, bad step index, ...)."""


class UnsupportedConfigError(SchedulerError):
    """A scheduler config key holds a value this implementation does not support."""


def resolve_config(
    class_name: str,
    config: Mapping[str, Any],
    defaults: Mapping[str, Any],
    choices: Mapping[str, tuple[Any, ...]],
    fixed: Mapping[str, Any],
    aliases: Mapping[str, Mapping[Any, Any]] | None = None,
) -> dict[str, Any]:
    """``defaults`` overridden by the keys of ``config`` this class knows, checked against what we implement.

    ``choices``: keys whose value must be one of the listed ones. ``fixed``: diffusers options we do not implement;
    any value but the listed default is refused, naming the key and value, never silently ignored. ``aliases``:
    values diffusers' class silently maps onto ones it implements; mapped the same way before checking. Keys
    diffusers' class does not have are ignored, as ``from_config`` ignores them.
    """
    resolved = dict(defaults)
    for key in (*defaults, *fixed):
        if key in config:
            resolved[key] = config[key]
    for key, mapping in (aliases or {}).items():
        if resolved.get(key) in mapping:
            resolved[key] = mapping[resolved[key]]
    for key, allowed in choices.items():
        if resolved.get(key) not in allowed:
            raise UnsupportedConfigError(
                f"{class_name}: {key}={resolved.get(key)!r} is not supported; supported values: "
                + ", ".join(repr(a) for a in allowed)
            )
    for key, default in fixed.items():
        value = resolved.get(key, default)
        if not _same_default(value, default):
            raise UnsupportedConfigError(
                f"{class_name}: {key}={value!r} is not supported by diffship's runtime (only {default!r})"
            )
        resolved[key] = default
    _check_values(class_name, resolved, defaults)
    return resolved


def _check_values(class_name: str, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Values of the types the defaults have, and in range: a hand-edited config fails here, by name."""
    for key, default in defaults.items():
        value = config[key]
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
            kind = "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise SchedulerError(f"{class_name}: {key} must be {kind}, got {value!r:.60}")
    if config.get("num_train_timesteps", 1) < 1 or config.get("steps_offset", 0) < 0:
        raise SchedulerError(f"{class_name}: num_train_timesteps must be >= 1 and steps_offset >= 0, got "
                             f"{config.get('num_train_timesteps')} and {config.get('steps_offset')}")
    for key in ("beta_start", "beta_end"):
        if key in config and not 0 < config[key] < 1:
            raise SchedulerError(f"{class_name}: {key} must lie between 0 and 1, got {config[key]!r}")
    betas = config.get("trained_betas")
    if betas is not None:
        numbers = isinstance(betas, (list, tuple)) and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas)
        if not numbers or len(betas) != config["num_train_timesteps"]:
            raise SchedulerError(f"{class_name}: trained_betas must be {config['num_train_timesteps']} numbers between "
                                 f"0 and 1 (one per train timestep), got {str(betas)[:60]}")
    ratio = config.get("dynamic_thresholding_ratio")
    if config.get("thresholding") and not (isinstance(ratio, (int, float)) and 0 <= ratio <= 1):
        raise SchedulerError(f"{class_name}: dynamic_thresholding_ratio must lie between 0 and 1, got {ratio!r}")
    for key in ("sigma_min", "sigma_max"):
        if config.get(key) is not None and not (isinstance(config[key], (int, float)) and config[key] > 0):
            raise SchedulerError(f"{class_name}: {key} must be null or a number > 0, got {config[key]!r}")


def _same_default(value: Any, default: Any) -> bool:
    # None, False and [] all mean "off" in diffusers configs.
    if _is_off(value) and _is_off(default):
        return True
    return bool(value == default)


def _is_off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple)) and not value)


BETA_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SCHEDULE_CHOICES: dict[str, tuple[Any, ...]] = {
    "prediction_type": PREDICTION_TYPES, "timestep_spacing": SPACINGS, "beta_schedule": BETA_SCHEDULES,
}
"""What every scheduler here implements of diffusers' common config keys (some narrow ``prediction_type``)."""
SIGMA_CHOICES: dict[str, tuple[Any, ...]] = {
    "final_sigmas_type": ("zero", "sigma_min"), "use_karras_sigmas": (False, True, None),
}
UNSUPPORTED_SIGMAS: dict[str, Any] = {
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False, "use_dynamic_shifting": False,
}
"""Sigma schedules diffusers offers that no scheduler here implements: refused by name when set."""


def _linspace_f32(start: float, end: float, count: int) -> np.ndarray:
    """torch.linspace(start, end, count, dtype=float32), bit for bit.

    torch's CPU kernel computes ``start + step * i`` for the first half and ``end - step * (count - 1 - i)`` for the
    second, in float32 with a fused multiply-add (one rounding); float64 arithmetic rounded once to float32 is that
    same fused operation. numpy's own linspace differs from it in the last bit of ~30% of the betas.
    """
    start32, end32 = F32(start), F32(end)
    step = F32((end32 - start32) / F32(count - 1))
    index = np.arange(count, dtype=np.float64)
    first = np.float64(start32) + np.float64(step) * index
    second = np.float64(end32) - np.float64(step) * (count - 1 - index)
    return np.where(index < count // 2, first, second).astype(F32)


def _betas_for_alpha_bar(count: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / count) / alpha_bar(i / count), max_beta) for i in range(count)], dtype=F32
    )


def cumprod_f32(values: np.ndarray) -> np.ndarray:
    """torch.cumprod on float32 CPU tensors accumulates in double; so do we."""
    return np.cumprod(values.astype(np.float64)).astype(F32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    alphas_bar_sqrt = np.sqrt(cumprod_f32(F32(1.0) - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = alphas_bar_sqrt - last
    alphas_bar_sqrt = alphas_bar_sqrt * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (F32(1.0) - alphas).astype(F32)


def make_betas(config: Mapping[str, Any], class_name: str) -> np.ndarray:
    """float32 betas from ``trained_betas`` or ``beta_schedule``, rescaled to zero terminal SNR when asked."""
    count = int(config["num_train_timesteps"])
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=F32)
    elif config["beta_schedule"] == "linear":
        betas = _linspace_f32(config["beta_start"], config["beta_end"], count)
    elif config["beta_schedule"] == "scaled_linear":
        betas = _linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, count) ** 2
    elif config["beta_schedule"] == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(count)
    else:
        raise UnsupportedConfigError(
            f"{class_name}: beta_schedule={config['beta_schedule']!r} is not supported; supported values: "
            + ", ".join(repr(s) for s in BETA_SCHEDULES)
        )
    if config.get("rescale_betas_zero_snr"):
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def make_alphas_cumprod(config: Mapping[str, Any], class_name: str, zero_snr_floor: bool = False) -> np.ndarray:
    """Cumulative alpha products; with zero terminal SNR, the sigma-based schedulers floor the last at 2**-24."""
    alphas_cumprod = cumprod_f32(F32(1.0) - make_betas(config, class_name))
    if zero_snr_floor and config.get("rescale_betas_zero_snr"):
        alphas_cumprod[-1] = F32(2.0**-24)
    return alphas_cumprod


def spaced_timesteps(
    spacing: str, num_train_timesteps: int, count: int, steps_offset: int, last_timestep: int | None = None
) -> np.ndarray:
    """``count`` descending float64 timesteps with diffusers' leading/trailing/linspace spacing (not rounded)."""
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, count)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, count) * (last // count)).round()[::-1].copy() + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(last, 0, -num_train_timesteps / count)) - 1
    raise SchedulerError(f"unknown timestep_spacing {spacing!r}")


def multistep_timesteps(
    spacing: str, num_train_timesteps: int, count: int, steps_offset: int, last_timestep: int | None = None
) -> np.ndarray:
    """DPM-Solver/UniPC spacing: ``count + 1`` points with the last (t = 0 end) dropped; int64."""
    last = num_train_timesteps if last_timestep is None else last_timestep
    timesteps: np.ndarray
    if spacing == "linspace":
        timesteps = np.linspace(0, last - 1, count + 1).round()[::-1][:-1].copy()
    elif spacing == "leading":
        timesteps = (np.arange(0, count + 1) * (last // (count + 1))).round()[::-1][:-1].copy() + steps_offset
    elif spacing == "trailing":
        timesteps = np.arange(last, 0, -num_train_timesteps / count).round() - 1
    else:
        raise SchedulerError(f"unknown timestep_spacing {spacing!r}")
    return timesteps.astype(np.int64)


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Per-train-timestep sigmas, float32 (torch computes them from float32 alphas_cumprod)."""
    return np.sqrt((F32(1.0) - alphas_cumprod) / alphas_cumprod).astype(F32)


def final_sigma(config: Mapping[str, Any], alphas_cumprod: np.ndarray) -> float:
    """The sigma appended after the last step: 0, or the first train timestep's sigma for ``sigma_min``."""
    if config["final_sigmas_type"] == "sigma_min":
        return float(np.sqrt((F32(1.0) - alphas_cumprod[0]) / alphas_cumprod[0]))
    return 0.0


def sigma_to_t(sigma: np.ndarray | float, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional train timestep of ``sigma`` by interpolation in log-sigma (diffusers' ``_sigma_to_t``)."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    weight = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - weight) * low_idx + weight * high_idx).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, count: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels, float64 like diffusers' ``_convert_to_karras``."""
    ramp = np.linspace(0, 1, count)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def karras_schedule(
    base_sigmas: np.ndarray, count: int, sigma_min: float, sigma_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Karras sigmas between ``sigma_min`` and ``sigma_max`` and the fractional train timesteps they fall on."""
    sigmas = karras_sigmas(sigma_min, sigma_max, count)
    log_sigmas = np.log(base_sigmas)
    return sigmas, np.array([sigma_to_t(sigma, log_sigmas) for sigma in sigmas])


def predicted_original(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha_t: Any, sigma_t: Any) -> np.ndarray:
    """x0 from the model's output, with ``x_t = alpha_t x0 + sigma_t noise`` (variance-preserving form)."""
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output


def predicted_noise(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha_t: Any, sigma_t: Any) -> np.ndarray:
    """The noise in ``x_t = alpha_t x0 + sigma_t noise`` from the model's output."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t * model_output + sigma_t * sample
    return (sample - alpha_t * model_output) / sigma_t


def alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    """VP alpha_t, sigma_t of a VE sigma (diffusers' ``_sigma_to_alpha_sigma_t``), in float32."""
    alpha_t = F32(1.0) / np.sqrt(sigma**2 + F32(1.0))
    return F32(alpha_t), F32(sigma * alpha_t)


def log_snr(alpha_t: Any, sigma_t: Any) -> Any:
    """lambda = log(alpha) - log(sigma); +inf at sigma = 0 (the final step), as in torch."""
    with np.errstate(divide="ignore"):
        return F32(np.log(alpha_t) - np.log(sigma_t))


THRESHOLD_DEFAULTS: dict[str, Any] = {
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
}
"""Dynamic thresholding (Imagen, Saharia et al. 2022), the keys of diffusers' schedulers that offer it."""


def threshold_sample(x0: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """diffusers' ``_threshold_sample``: per image, clamp x0 to the ``dynamic_thresholding_ratio`` quantile of its
    absolute values (kept within 1..``sample_max_value``) and divide by it; a no-op unless ``thresholding`` is set.

    Meant for pixel-space models; on SD latents (whose range is about +-4) it is a strong clamp, as in diffusers. The
    quantile is torch.quantile's float32 arithmetic: rank q * (n - 1) in float32, then a lerp between its neighbours
    fused as torch's CPU kernel does (float64 then float32: one rounding); a NaN makes the image's limit NaN, as in
    torch. numpy's own quantile ranks in float64 and differs by up to 2e-5."""
    if not config["thresholding"]:
        return x0
    batch = x0.shape[0]
    flat = x0.reshape(batch, -1)
    ordered = np.sort(np.abs(flat), axis=1)
    rank = F32(config["dynamic_thresholding_ratio"]) * F32(flat.shape[1] - 1)
    below, above = int(np.floor(rank)), int(np.ceil(rank))
    weight = F32(rank - F32(below))
    low, high = ordered[:, below], ordered[:, above]
    span = (high - low).astype(np.float64)
    if weight < 0.5:
        limit = (low.astype(np.float64) + np.float64(weight) * span).astype(F32)
    else:
        limit = (high.astype(np.float64) - span * np.float64(F32(1.0) - weight)).astype(F32)
    limit = np.where(np.isnan(ordered[:, -1]), F32(np.nan), limit)
    limit = np.clip(limit, F32(1.0), F32(config["sample_max_value"]))[:, np.newaxis]
    return (np.clip(flat, -limit, limit) / limit).reshape(x0.shape).astype(F32, copy=False)


class Scheduler:
    """The shared interface: ``timesteps``, ``init_noise_sigma``, ``scale_model_input``, ``step``.

    ``i`` is the step index into ``timesteps``. Stochastic schedulers take their Gaussian draw from ``noise`` when
    given (so callers can inject it), otherwise from the numpy Generator given at construction. Multistep
    schedulers keep their history explicitly and must be stepped in order 0, 1, 2, ...

    A subclass declares its config as class data (``DEFAULTS``, ``CHOICES``, ``FIXED``, ``ALIASES``: see
    ``resolve_config``) and builds its schedule in ``_schedule``; the constructor here resolves the config and makes
    the cumulative alphas first.
    """

    class_name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    """UNet calls per step (diffusers' ``order``): 2 for Heun and KDPM2, whose ``timesteps`` hold each step's
    timestep twice (the last once); image-to-image starts at ``start_index(..., order)``."""
    stochastic: bool = False
    """Whether ``step`` consumes Gaussian draws (at the steps ``noise_at`` names); may depend on the config or eta."""
    DEFAULTS: ClassVar[Mapping[str, Any]] = BETA_DEFAULTS
    CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    FIXED: ClassVar[Mapping[str, Any]] = {}
    ALIASES: ClassVar[Mapping[str, Mapping[Any, Any]]] = {}
    zero_snr_floor: ClassVar[bool] = False
    below_train_steps: ClassVar[bool] = False
    """At most num_train_timesteps - 1 steps: at num_train_timesteps the spacing of these classes either overruns the
    last train timestep (leading spacing plus steps_offset: DDIM, PNDM) or repeats a timestep (linspace rounded:
    DPM-Solver, DEIS, UniPC, whose next step then divides by a zero log-SNR gap). diffusers 0.42 fails there too
    (IndexError, NaN); refused by name here instead."""
    """Sigma-based schedulers floor the last cumulative alpha at 2**-24 under zero terminal SNR, as diffusers does."""

    timesteps: np.ndarray
    """The values the UNet receives, one per step (int64, or float32 for the Euler family)."""
    init_noise_sigma: float
    config: dict[str, Any]

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        generator: np.random.Generator | None = None,
        eta: float = 0.0,
    ) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise SchedulerError(f"eta must be a number from 0 to 1, got {eta!r}")
        self.eta = float(eta)
        """diffusers' step(eta=...): the share of fresh noise DDIM and TCD inject; ignored by the others, as the SD
        pipelines ignore it for schedulers whose step() takes no eta."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or num_inference_steps < 1:
            raise SchedulerError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        self.num_inference_steps = int(num_inference_steps)
        self.generator = generator
        self.steps_taken = 0
        """Steps taken since ``begin_index`` (multistep warm-up counts these, not the index)."""
        self.begin_index = 0
        self.config = resolve_config(self.class_name, config, self.DEFAULTS, self.CHOICES, self.FIXED, self.ALIASES)
        most = self.most_steps()
        if most is not None and self.num_inference_steps > most:
            over = self.num_inference_steps > most + 1
            raise SchedulerError(
                (f"num_inference_steps {self.num_inference_steps} exceeds num_train_timesteps {most + 1}: " if over
                 else "") + f"{self.class_name} takes at most {most} steps (num_train_timesteps - 1: at "
                f"{most + 1} its timestep spacing overruns or repeats a train timestep), got {self.num_inference_steps}")
        self.alphas_cumprod = make_alphas_cumprod(self.config, self.class_name, zero_snr_floor=self.zero_snr_floor)
        self._schedule(self.num_inference_steps)

    def most_steps(self) -> int | None:
        """The most inference steps this scheduler runs with its config (None: no bound of its own)."""
        return int(self.config["num_train_timesteps"]) - 1 if self.below_train_steps else None

    def _schedule(self, count: int) -> None:
        """Set ``timesteps`` and ``init_noise_sigma`` (and any per-step tables) for ``count`` steps."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.timesteps)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        return sample

    def noise_at(self, i: int) -> bool:
        """Whether ``step(..., i, ...)`` consumes a Gaussian draw: the pipeline draws one from each image's generator
        exactly at these steps, in diffusers' order, so seeded runs match diffusers' draw for draw."""
        return self.stochastic

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def begin(self, index: int) -> None:
        """Start at step ``index`` instead of 0 (image-to-image), as diffusers' ``set_begin_index``: the first step
        taken is ``index`` and multistep histories start empty there."""
        if self.steps_taken:
            raise SchedulerError(f"{self.class_name}: begin() comes before the first step")
        if not 0 <= index < len(self.timesteps):
            raise SchedulerError(f"{self.class_name}: begin index {index} is outside 0..{len(self.timesteps) - 1}")
        self.begin_index = index

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """``original`` noised to the level of step ``index`` (diffusers' ``add_noise`` at that step's timestep)."""
        timestep = int(self.timesteps[index])
        alpha_cumprod = self.alphas_cumprod[timestep]
        noised = np.sqrt(alpha_cumprod) * original + np.sqrt(F32(1.0) - alpha_cumprod) * noise
        return noised.astype(F32, copy=False)

    def final_alpha_cumprod(self) -> np.float32:
        """The cumulative alpha after the last step: 1 with ``set_alpha_to_one``, else the first train step's."""
        return F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def _check_index(self, i: int, in_order: bool = False) -> None:
        if not 0 <= i < len(self.timesteps):
            raise SchedulerError(f"step index {i} is outside 0..{len(self.timesteps) - 1}")
        expected = self.begin_index + self.steps_taken
        if in_order and i != expected:
            raise SchedulerError(
                f"{self.class_name} keeps a multistep history: expected step {expected}, got {i}; "
                "step in order (from begin_index), or build a new scheduler"
            )

    def _draw(self, noise: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        if noise is not None:
            if noise.shape != shape:
                raise SchedulerError(f"noise shape {noise.shape} does not match the sample's {shape}")
            return noise.astype(F32, copy=False)
        if self.generator is None:
            raise SchedulerError(f"{self.class_name} is stochastic: pass noise= or build it with a numpy Generator")
        return self.generator.standard_normal(shape, dtype=F32)


def start_index(num_inference_steps: int, strength: float, order: int = 1) -> int:
    """The step image-to-image starts from: ``strength`` of the schedule is run, counted from its end, as diffusers'
    img2img pipelines compute it (``int(steps * strength)`` steps)."""
    run = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - run, 0) * order


def _cutoff(fraction: float, num_train_timesteps: int) -> int:
    # Python's round, as diffusers: the training timestep a fraction of the way through denoising.
    return int(round(num_train_timesteps - fraction * num_train_timesteps))


def handoff_start(timesteps: np.ndarray, num_train_timesteps: int, order: int, denoising_start: float) -> int:
    """The step a hand-off continues from (``denoising_start``, in place of strength): the first step whose timestep is
    below the cutoff, as StableDiffusionXLImg2ImgPipeline.get_timesteps; a second-order scheduler starts on a whole
    step (its step count made odd)."""
    remaining = int((np.asarray(timesteps) < _cutoff(denoising_start, num_train_timesteps)).sum())
    if order == 2 and remaining % 2 == 0:
        remaining += 1
    return max(len(timesteps) - remaining, 0)


def handoff_stop(timesteps: np.ndarray, num_train_timesteps: int, first: int, denoising_end: float) -> int:
    """One past the last step run when denoising stops early (``denoising_end``): the steps from ``first`` on whose
    timestep is at or above the cutoff, as diffusers' SDXL pipelines count them."""
    cutoff = _cutoff(denoising_end, num_train_timesteps)
    return first + sum(1 for timestep in timesteps[first:] if timestep >= cutoff)


class MultistepSigmaScheduler(Scheduler):
    """DPM-Solver++ and UniPC: steps between noise levels ``sigmas`` in log-SNR ``lambda``, in order."""

    zero_snr_floor = True
    sigmas: np.ndarray

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        alpha_t, sigma_t = alpha_sigma(self.sigmas[index])
        return (alpha_t * original + sigma_t * noise).astype(F32, copy=False)

    def _lambda(self, index: int) -> tuple[np.float32, np.float32, np.float32]:
        alpha, sigma = alpha_sigma(self.sigmas[index])
        return alpha, sigma, log_snr(alpha, sigma)
