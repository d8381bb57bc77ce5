"""I/O contracts shared by the exporter, the engine builders and the runtime.

Everything here is plain data (frozen dataclasses that round-trip through JSON) so that the torch side, the builder
and the torch-free runtime all read the same description of a model package instead of repeating shape literals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from diffship.core.errors import PackageError
from diffship.core.reading import build, obj, typed_fields

Dim = int | str
"""A tensor dimension: a fixed size, or the name of a symbolic dimension (see ``SYMBOLIC_DIMS``)."""

SYMBOLIC_DIMS = ("batch", "latent_height", "latent_width", "image_height", "image_width", "text_length",
                 "cache_height", "cache_width")
"""The symbolic dimension names a package may use; all derive from (batch, image height, image width) and the number
of prompt chunks (``text_length``: the UNet's text sequence, one text-encoder window per chunk of a long prompt).
``cache_height``/``cache_width``: the DeepCache feature's size, the latent size halved (rounded up) once per UNet
block before the package's cache branch (``CACHE_COMPONENTS`` only)."""

CACHE_COMPONENTS = ("unet_cache_full", "unet_cache_shallow")
"""DeepCache's two UNet graphs (``export --cache-branch``; exporter/deepcache.py). Engine builds leave them out
unless named: their shape profiles (the feature's size) are not derived yet, so they run from the exported ONNX."""

NUMPY_DTYPES = ("float32", "float16", "int64", "int32")


def symbolic_dims(
    batch: int, height: int, width: int, vae_scale_factor: int, text_length: int = 77
) -> dict[str, int]:
    """Values of every symbolic dimension for one request of ``batch`` images of ``height`` x ``width`` pixels whose
    prompts fill ``text_length`` text positions (the text encoder's window, times the chunks of a long prompt)."""
    return {
        "batch": batch,
        "text_length": text_length,
        "image_height": height,
        "image_width": width,
        "latent_height": height // vae_scale_factor,
        "latent_width": width // vae_scale_factor,
    }


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a component: numpy dtype name and a shape of sizes and symbolic names."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(NUMPY_DTYPES)}")
        for dim in self.shape:
            if isinstance(dim, str) and dim not in SYMBOLIC_DIMS:
                raise ValueError(f"tensor {self.name!r}: unknown symbolic dimension {dim!r}")

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape for the given symbolic dimension values."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def mismatch(self, shape: Sequence[int]) -> str | None:
        """Why ``shape`` cannot feed this tensor, or None when it can."""
        if len(shape) != len(self.shape):
            return f"expected {len(self.shape)} dimensions {self.pretty_shape()}, got shape {tuple(shape)}"
        for axis, (want, got) in enumerate(zip(self.shape, shape, strict=True)):
            if isinstance(want, int) and want != got:
                return f"dimension {axis} must be {want} (shape {self.pretty_shape()}), got shape {tuple(shape)}"
        return None

    def pretty_shape(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "tensor") -> TensorSpec:
        return build(cls, where, **typed_fields(cls, data, where))


@dataclass(frozen=True)
class ComponentSpec:
    """The export boundary of one component (text_encoder, unet, vae_decoder, vae_encoder)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no input {name!r} (inputs: {', '.join(s.name for s in self.inputs)})")

    def with_float_dtype(self, dtype: str) -> ComponentSpec:
        """The same boundary with every floating tensor in ``dtype``, except ``timestep`` which stays float32."""

        def convert(spec: TensorSpec) -> TensorSpec:
            if spec.dtype.startswith("float") and spec.name != "timestep":
                return TensorSpec(spec.name, dtype, spec.shape)
            return spec

        return ComponentSpec(self.name, tuple(map(convert, self.inputs)), tuple(map(convert, self.outputs)))

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any], where: str = "component") -> ComponentSpec:
        found = typed_fields(cls, {**obj(data, where), "name": name}, where, skip=())
        return cls(
            name=name,
            inputs=tuple(TensorSpec.from_json(s, f"{where}.inputs[{i}]") for i, s in enumerate(found["inputs"])),
            outputs=tuple(TensorSpec.from_json(s, f"{where}.outputs[{i}]") for i, s in enumerate(found["outputs"])),
        )


@dataclass(frozen=True)
class TextEncoderConstants:
    """What one text encoder needs, recorded at export: its component, its tokenizer's folder, the width of the hidden
    states it gives the UNet, its pad token and the size of its vocabulary (the ids its ``input_ids`` take)."""

    component: str
    tokenizer: str
    """The package folder of its tokenizer files (``tokenizer``, ``tokenizer_2``)."""
    hidden_size: int
    pad_token: str
    vocab_size: int | None = None
    """None in packages exported before it was recorded: ``ModelPackage.vocab_size`` then counts the tokenizer's
    ``vocab.json``."""

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"{self.component}: hidden_size must be >= 1, got {self.hidden_size}")
        if not self.pad_token:
            raise ValueError(f"{self.component}: pad_token is empty")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"{self.component}: vocab_size must be >= 1, got {self.vocab_size}")

    @classmethod
    def from_json(cls, data: Any, where: str) -> TextEncoderConstants:
        return build(cls, where, **typed_fields(cls, data, where))


@dataclass(frozen=True)
class FamilyConstants:
    """The part of the constants only one family has (``Family.constants_type`` names its type; SD has none). A
    family's description reads it through its own type's ``of(constants)``."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> FamilyConstants:
        return build(cls, where, **typed_fields(cls, data, where))


@dataclass(frozen=True)
class PipelineConstants:
    """What the runtime needs to drive a package; read from the manifest, never from literals. Shared by every
    family; what one family alone has is the nested ``family`` part (docs/design.md, "Families")."""

    latent_channels: int
    vae_scale_factor: int
    scaling_factor: float
    prediction_type: str
    default_height: int
    default_width: int
    text_max_length: int
    """The text encoders' window in tokens (all of a package's encoders share it)."""
    text_encoders: tuple[TextEncoderConstants, ...]
    """Every text encoder, in the order their hidden states are joined for the UNet."""
    spatial_multiple: int
    """Height and width must be multiples of this many pixels: the VAE's factor (packages exported before diffship
    expressed the UNet's up-sampling to its skip connections: that factor x the UNet's 2**num_upsamplers)."""
    shift_factor: float | None = None
    unet_in_channels: int | None = None
    """Channels the UNet takes when they differ from the latents' (9 for inpainting UNets: latents, mask, masked
    image latents); None: ``latent_channels``."""
    force_upcast: bool = False
    """The VAE overflows in fp16 (its config's ``force_upcast``): diffusers decodes in fp32."""
    clip_skip: int = 0
    """Text-encoder layers skipped from the end, as diffusers' ``clip_skip`` (0: its None). Chosen at export
    (``--clip-skip``) and built into the text encoder graphs; the runtime refuses a call that asks for another."""
    family: FamilyConstants = FamilyConstants()
    """What only this package's family has (SDXL: ``core.families.sdxl.XLConstants``)."""

    def text_encoder(self, component: str) -> TextEncoderConstants:
        for encoder in self.text_encoders:
            if encoder.component == component:
                return encoder
        raise PackageError(f"no text encoder {component!r} in the constants (they list "
                           f"{', '.join(e.component for e in self.text_encoders) or 'none'}); re-export the package")

    def vocabulary_of(self, component: str) -> str:
        """The text encoder whose vocabulary ``component``'s token ids come from: its own for a text encoder, the
        first's for any other (verification draws random inputs; only text encoders read ids)."""
        encoders = [encoder.component for encoder in self.text_encoders]
        return component if component in encoders else encoders[0]

    @property
    def unet_text_size(self) -> int:
        """Width of the text states the UNet reads: every encoder's hidden states side by side."""
        return sum(encoder.hidden_size for encoder in self.text_encoders)

    def upcasts(self, component: str) -> bool:
        """Whether ``component`` runs in fp32 inside an fp16 pipeline: a VAE whose config sets ``force_upcast``
        (SDXL's overflows in fp16), as diffusers upcasts it."""
        return self.force_upcast and component in ("vae_decoder", "vae_encoder")

    @property
    def unet_channels(self) -> int:
        return self.unet_in_channels or self.latent_channels

    @property
    def size_rule(self) -> str:
        """Why heights and widths are multiples of ``spatial_multiple``, for messages."""
        if self.spatial_multiple == self.vae_scale_factor:
            return "this model's VAE factor"
        return (f"the VAE factor {self.vae_scale_factor} x the UNet's down-sampling, as older exports need; re-export "
                f"the package for any multiple of {self.vae_scale_factor}")

    @property
    def inpainting_unet(self) -> bool:
        """A UNet conditioned on a mask and the masked image's latents (``2 x latent_channels + 1`` inputs)."""
        return self.unet_channels == 2 * self.latent_channels + 1

    def __post_init__(self) -> None:
        for name in ("latent_channels", "vae_scale_factor", "default_height", "default_width", "text_max_length",
                     "spatial_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.text_encoders:
            raise ValueError("text_encoders is empty: a package needs at least one text encoder")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")
        if self.spatial_multiple % self.vae_scale_factor:
            raise ValueError(f"spatial_multiple {self.spatial_multiple} is not a multiple of vae_scale_factor "
                             f"{self.vae_scale_factor}")
        if self.clip_skip < 0:
            raise ValueError(f"clip_skip must be >= 0, got {self.clip_skip}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["family"] = self.family.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "constants",
                  family_type: type[FamilyConstants] = FamilyConstants) -> PipelineConstants:
        """Read the constants; ``family_type``: the type of the nested family part (``Family.constants_type``)."""
        found = typed_fields(cls, data, where, skip=("text_encoders", "family"))
        encoders = data.get("text_encoders")
        if not isinstance(encoders, list):
            raise PackageError(f"{where}.text_encoders must be a list of objects, got {encoders!r:.80}")
        found["text_encoders"] = tuple(TextEncoderConstants.from_json(e, f"{where}.text_encoders[{i}]")
                                       for i, e in enumerate(encoders))
        found["family"] = family_type.from_json(data.get("family", {}), f"{where}.family")
        return build(cls, where, **found)


def dim_multiples(constants: PipelineConstants) -> dict[str, int]:
    """Symbolic dimensions are exported as multiples of these, so the UNet's skip connections always line up."""
    latent_multiple = constants.spatial_multiple // constants.vae_scale_factor
    return {
        "batch": 1,
        "latent_height": latent_multiple,
        "latent_width": latent_multiple,
        "image_height": constants.spatial_multiple,
        "image_width": constants.spatial_multiple,
        "text_length": constants.text_max_length,
    }


@dataclass(frozen=True)
class Range:
    """An inclusive integer range with the value engines are tuned for (``opt``)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"range needs 1 <= min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}")

    @classmethod
    def fixed(cls, value: int) -> Range:
        return cls(value, value, value)


@dataclass(frozen=True)
class ShapeRequest:
    """What a user asks engines to support: images per UNet call, and pixel height/width ranges."""

    batch: Range
    height: Range
    width: Range
    prompt_chunks: Range = Range(1, 1, 1)
    """Text-encoder windows per prompt the UNet accepts (long prompts, ``--long-prompts``): 1 is the 77-token default."""

    @property
    def static(self) -> bool:
        return all(r.min == r.max for r in (self.batch, self.height, self.width, self.prompt_chunks))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "request") -> ShapeRequest:
        ranges = {key: build(Range, f"{where}.{key}", **typed_fields(Range, value, f"{where}.{key}"))
                  for key, value in typed_fields(cls, data, where).items()}
        return cls(**ranges)


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shape of every input of one component: what a TensorRT optimisation profile holds."""

    component: str
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def batch_range(self, input_name: str) -> tuple[int, int]:
        low, _, high = self.shapes[input_name]
        return low[0], high[0]

    def violation(self, input_name: str, shape: Sequence[int]) -> str | None:
        """Why ``shape`` lies outside this profile for ``input_name``, or None when it lies inside."""
        low, _, high = self.shapes[input_name]
        if len(shape) != len(low) or any(not (lo <= s <= hi) for lo, s, hi in zip(low, shape, high, strict=True)):
            return (
                f"{self.component} input {input_name!r} shape {tuple(shape)} is outside the engine's profile "
                f"(min {tuple(low)}, max {tuple(high)}); rebuild the engines with a wider --batch/--min-size/--max-size"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {name: {"min": list(lo), "opt": list(op), "max": list(hi)} for name, (lo, op, hi) in self.shapes.items()}

    @classmethod
    def from_json(cls, component: str, data: Any, where: str = "profile") -> ShapeProfile:
        shapes = {}
        for name, corners in obj(data, where).items():
            found = typed_fields(_ProfileCorners, corners, f"{where}.{name}")
            shapes[name] = (found["min"], found["opt"], found["max"])
        return cls(component, shapes)


@dataclass(frozen=True)
class _ProfileCorners:
    """How one input's min/opt/max shapes are written in a manifest (for reading it)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class BuildConfig:
    """How to build engines: which library, which precision, which GPUs, how hard the builder may try."""

    backend: str
    """``trt`` (full TensorRT, for the GPU it runs on) or ``trt-rtx`` (TensorRT-RTX, ahead of time for ``archs``)."""
    precision: str = "fp16"
    archs: tuple[str, ...] = ()
    """Compute-capability targets such as ``sm89``; empty means the GPU of this machine."""
    optimization_level: int = 3
    workspace_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["archs"] = list(self.archs)
        return data
