"""LoRA files, read and merged without torch (docs/design.md, "LoRA").

Two formats, the ones people have:

- diffusers / peft (``save_lora_weights``): ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (or the older
  ``lora.down`` / ``lora.up``), ``text_encoder.<module>...``; alpha from the file's ``lora_adapter_metadata``
  (``lora_alpha``, ``alpha_pattern``, ``rank_pattern``, ``use_rslora``), else alpha = rank, as diffusers assumes.
- kohya / web UI: ``lora_unet_<module with _ for .>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``, and
  ``lora_te_...`` for the text encoder; alpha = rank when the file has none.

Linear and convolution (1x1 and k x k) layers: ``delta = scale * alpha / rank * up @ down`` in torch's layout, put
into the layout the graph stores (``core.weights``) and added to the base weight read from the package. The prefixes
a family's components take come from its description (``Family.adapters``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffship.core.errors import DiffshipError
from diffship.core.package import ModelPackage
from diffship.core.weights import WeightMap, read_stored
from diffship.engines.backend import Selection

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
_PEFT = re.compile(r"^(?P<module>.+?)\.(?:lora_(?P<ab>[AB])|(?:lora|lora_linear_layer)\.(?P<du>down|up))\.weight$")
_KOHYA = re.compile(r"^(?P<module>.+?)\.(?:lora_(?P<du>down|up)\.weight|(?P<alpha>alpha))$")
OTHER_FAMILIES = {"lora_te1_": "SDXL (two text encoders)", "lora_te2_": "SDXL (two text encoders)",
                  "text_encoder_2.": "SDXL (two text encoders)", "transformer.": "a transformer model (SD3, Flux)",
                  "lora_transformer_": "a transformer model (SD3, Flux)"}


class LoraError(DiffshipError, ValueError):
    """A LoRA file that cannot be applied; the message names the file and what is wrong."""


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA file and the scale to apply it at (diffusers' ``lora_scale``; 1.0 is the file as trained)."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, value: str | os.PathLike[str] | tuple[Any, float] | LoraRequest) -> LoraRequest:
        """``"file.safetensors"``, ``"file.safetensors:0.8"``, ``(path, 0.8)`` or a LoraRequest."""
        if isinstance(value, LoraRequest):
            return value
        if isinstance(value, tuple):
            path, scale = value
            return cls._checked(Path(path), scale, f"{path}")
        text = os.fspath(value)
        head, sep, tail = text.rpartition(":")
        if sep and head and not tail.startswith(("\\", "/")):
            try:
                scale = float(tail)
            except ValueError:
                # A colon in a file's name is fine; anything else after the last colon was meant as the scale.
                if not Path(text).exists() and not any(c in tail for c in "/\\"):
                    raise LoraError(f"LoRA {text}: the scale after ':' must be a number, as in {head}:0.8; "
                                    f"got {tail!r}") from None
            else:
                return cls._checked(Path(head), scale, text)
        return cls(Path(text))

    @classmethod
    def _checked(cls, path: Path, scale: Any, text: str) -> LoraRequest:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise LoraError(f"LoRA {text}: the scale must be a finite number, got {scale!r}")
        return cls(path, float(scale))


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank update of one module: ``delta = alpha / rank * up @ down``."""

    component: str
    module: str
    down: np.ndarray
    """``[rank, in]`` or ``[rank, in, kh, kw]``."""
    up: np.ndarray
    """``[out, rank]`` or ``[out, rank, 1, 1]``."""
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: tuple[int, ...], scaling: float) -> np.ndarray:
        """The update in torch's layout, float32, for a weight of ``shape``."""
        product = self.up.reshape(self.up.shape[0], self.rank).astype(np.float32) @ \
            self.down.reshape(self.rank, -1).astype(np.float32)
        return product.reshape(shape) * np.float32(scaling)


@dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file: its layers and the keys that matched no module of the package's family."""

    path: Path
    format: str
    layers: tuple[LoraLayer, ...]
    unmatched: tuple[str, ...]


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (float ones as float32/float16) and ``__metadata__`` of a ``.safetensors`` file, read with numpy."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            header_bytes = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            raw = handle.read(header_bytes) if 0 <= header_bytes <= min(size - 8, 100 << 20) else b""
    except FileNotFoundError:
        raise LoraError(f"LoRA file {path} does not exist") from None
    except IsADirectoryError:
        raise LoraError(f"LoRA {path} is a folder; give the .safetensors file inside it") from None
    except OSError as exc:
        raise LoraError(f"cannot read LoRA {path}: {exc.strerror or exc}") from None
    if header_bytes < 0:
        raise LoraError(f"LoRA {path}: not a safetensors file (shorter than its 8-byte header length)")
    if not raw:
        raise LoraError(f"LoRA {path}: not a safetensors file (header length {header_bytes} does not fit)")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LoraError(f"LoRA {path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraError(f"LoRA {path}: not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_bytes) if size > 8 + header_bytes else \
        np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise LoraError(f"LoRA {path}: tensor {name!r} is not a float tensor safetensors describes "
                            f"(dtype {info.get('dtype') if isinstance(info, dict) else info!r})") from None
        if not 0 <= begin <= end <= data.size or (end - begin) != math.prod(shape) * np.dtype(dtype).itemsize:
            raise LoraError(f"LoRA {path}: tensor {name!r} lies outside the file (truncated?)")
        array = data[begin:end].view(dtype).reshape(shape)
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_lora(path: Path, adapters: Mapping[str, tuple[str, ...]], modules: Mapping[str, set[str]],
              family: str) -> LoraFile:
    """Parse ``path`` for a family whose LoRA-taking components are ``adapters`` (component -> key prefixes) and
    whose modules are ``modules`` (component -> module paths)."""
    tensors, metadata = read_safetensors(Path(path))
    if not tensors:
        raise LoraError(f"LoRA {path} holds no tensors")
    for prefix, other in OTHER_FAMILIES.items():
        if any(key.startswith(prefix) for key in tensors):
            raise LoraError(f"LoRA {path} is for {other} (it has {prefix}... keys); this package is {family}")
    unsupported = sorted({key.rsplit(".", 1)[0].rsplit(".", 1)[-1] for key in tensors
                          if re.search(r"\.(dora_scale|lora_mid|hada_w1_a|lokr_w1)(\.|$)", key)})
    if unsupported:
        raise LoraError(f"LoRA {path} uses {', '.join(unsupported)} (DoRA / LoCon-Tucker / LoHa / LoKr); only plain "
                        "LoRA (down/up or lora_A/lora_B) is supported")
    parts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unmatched: list[str] = []
    # kohya's keys spell module paths with "_" for "."; the table is made once, not per key.
    underscored = {c: {m.replace(".", "_"): m for m in known} for c, known in modules.items()}
    formats: set[str] = set()
    for key, array in tensors.items():
        found = _match(key, adapters, modules, underscored)
        if found is None:
            unmatched.append(key)
            continue
        component, module, role, form = found
        formats.add(form)
        parts.setdefault((component, module), {})[role] = array
    if not parts:
        sample = ", ".join(sorted(tensors)[:3])
        raise LoraError(
            f"LoRA {path}: no key names a module of this {family} package (keys like {sample}); expected the "
            "diffusers/peft format (unet.<module>.lora_A.weight) or kohya's (lora_unet_<module>.lora_down.weight)"
        )
    peft_alpha = _peft_alphas(metadata, path)
    layers = []
    for (component, module), found_parts in sorted(parts.items()):
        if "down" not in found_parts or "up" not in found_parts:
            missing = "down (lora_A)" if "down" not in found_parts else "up (lora_B)"
            raise LoraError(f"LoRA {path}: {component} {module} has no {missing} weight")
        down, up = found_parts["down"], found_parts["up"]
        rank = int(down.shape[0])
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != rank:
            raise LoraError(f"LoRA {path}: {component} {module} has down {list(down.shape)} and up {list(up.shape)}, "
                            "which do not make a low-rank pair")
        if "alpha" in found_parts:
            alpha = float(np.asarray(found_parts["alpha"], np.float64).reshape(-1)[0])
        else:
            alpha = peft_alpha(component, module, rank)
        layers.append(LoraLayer(component, module, down, up, alpha))
    if unmatched:
        log.warning("LoRA %s: %d keys match no module of this package and are ignored: %s", path, len(unmatched),
                    ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
    return LoraFile(Path(path), "+".join(sorted(formats)), tuple(layers), tuple(unmatched))


def _match(key: str, adapters: Mapping[str, tuple[str, ...]], modules: Mapping[str, set[str]],
           underscored: Mapping[str, Mapping[str, str]]) -> tuple[str, str, str, str] | None:
    """(component, module, 'down'/'up'/'alpha', format) for one key, or None."""
    for component, prefixes in adapters.items():
        diffusers_prefix, kohya_prefix = prefixes[0], prefixes[-1]
        known = modules.get(component, set())
        if key.startswith(diffusers_prefix + "."):
            found = _PEFT.match(key[len(diffusers_prefix) + 1:])
            module = _known_module(found["module"], known) if found else None
            if found and module is not None:
                role = {"A": "down", "B": "up"}.get(found["ab"] or "", found["du"] or "")
                return component, module, role, "diffusers"
        if key.startswith(kohya_prefix + "_"):
            found = _KOHYA.match(key[len(kohya_prefix) + 1:])
            if found:
                by_underscores = underscored.get(component, {})
                module = _known_module(found["module"], by_underscores.keys(), "_")
                if module is not None:
                    return component, by_underscores[module], "alpha" if found["alpha"] else found["du"], "kohya"
    return None


def _known_module(module: str, known: Any, dot: str = ".") -> str | None:
    """``module`` as the package names it. transformers 5 dropped CLIP's ``text_model.`` level, which LoRA files
    made for transformers 4 (most of them) still name; either spelling finds the module."""
    wrapper = f"text_model{dot}"
    for candidate in (module, module.removeprefix(wrapper), wrapper + module):
        if candidate in known:
            return candidate
    return None


def _peft_alphas(metadata: Mapping[str, str], path: Path) -> Any:
    """alpha for (component, module, rank) from diffusers' ``lora_adapter_metadata``; rank when it has none."""
    raw = metadata.get("lora_adapter_metadata")
    config: dict[str, Any] = {}
    if raw:
        try:
            config = json.loads(raw)
        except ValueError:
            raise LoraError(f"LoRA {path}: its lora_adapter_metadata is not JSON") from None

    def alpha(component: str, module: str, rank: int) -> float:
        lora_alpha = config.get(f"{component}.lora_alpha")
        if lora_alpha is None:
            return float(rank)
        # peft's own lookup: a pattern matches a module path that ends with it.
        for pattern, value in (config.get(f"{component}.alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                lora_alpha = value
                break
        if config.get(f"{component}.use_rslora"):
            return float(lora_alpha) * rank / math.sqrt(rank)
        return float(lora_alpha)

    return alpha


def merged_weights(
    root: Path, weight_maps: Mapping[str, WeightMap], loras: Sequence[tuple[LoraFile, float]]
) -> dict[str, dict[str, np.ndarray]]:
    """Per component, initializer -> base weight plus every LoRA's scaled delta, in the graph's layout and dtype."""
    touched: dict[tuple[str, str], list[tuple[LoraLayer, float]]] = {}
    for lora, scale in loras:
        for layer in lora.layers:
            weight_map = weight_maps.get(layer.component)
            slot = weight_map.slots.get(layer.module) if weight_map is not None else None
            if slot is None:
                why = weight_map.unmapped.get(layer.module, "not in its weight map") if weight_map else \
                    "the engines in use record no weight map (re-export the package, or rebuild the engines)"
                raise LoraError(f"LoRA {lora.path}: {layer.component} {layer.module} cannot be changed: {why}")
            expected_in = slot.shape[1] * (math.prod(slot.shape[2:]) if len(slot.shape) == 4 else 1)
            if layer.up.shape[0] != slot.shape[0] or layer.down[0].size != expected_in or \
                    layer.down.ndim != len(slot.shape):
                raise LoraError(
                    f"LoRA {lora.path}: {layer.component} {layer.module} is {list(slot.shape)} in this package, the "
                    f"LoRA's up/down are {list(layer.up.shape)}/{list(layer.down.shape)} (a LoRA for another model "
                    "family or size?)"
                )
            touched.setdefault((layer.component, layer.module), []).append((layer, scale * layer.alpha / layer.rank))
    merged: dict[str, dict[str, np.ndarray]] = {}
    # One weight at a time, each delta added as soon as it is made: the peak is the merged weights plus one delta.
    for (component, module), updates in touched.items():
        slot = weight_maps[component].slots[module]
        weight = np.array(read_stored(root, slot), dtype=np.float32)
        for layer, scaling in updates:
            weight += slot.stored(layer.delta(slot.shape, scaling))
        merged.setdefault(component, {})[slot.initializer] = weight if slot.dtype == "float32" else \
            weight.astype(slot.dtype)
    return merged


def engine_weight_maps(package: ModelPackage, selection: Selection) -> dict[str, WeightMap]:
    """The weight maps of the graphs ``selection`` runs, for every component of the family that takes a LoRA."""
    maps = {}
    engine_set = selection.engine_set
    if selection.precision == "int8":
        raise LoraError("LoRA cannot be merged into int8 weights: use the fp32 engines (--precision fp32) with LoRAs")
    for component in package.family.adapters:
        entry = engine_set.components.get(component) if engine_set is not None else None
        relative = entry.weight_map if entry is not None else package.variant(component, selection.precision).weight_map
        if relative is None:
            where = f"engines/{engine_set.name}/{component}" if engine_set is not None and entry is not None else \
                f"the exported {component} ONNX"
            fix = "rebuild it with build-trt --refittable" if selection.backend == "trt" and entry is not None else \
                "run build-ort again" if entry is not None else "re-export the package with this diffship"
            raise LoraError(f"{where} of {package.root} records no weight map, which LoRA needs: {fix}")
        maps[component] = WeightMap.read(package.verify_file(relative), relative)
    return maps


def lora_weights(
    package: ModelPackage, selection: Selection, requests: Sequence[LoraRequest]
) -> tuple[tuple[LoraFile, ...], dict[str, dict[str, np.ndarray]]]:
    """Read every LoRA of ``requests`` and merge them into the weights of the engines ``selection`` runs; every error
    is raised before anything is returned, so a caller that swaps only on success keeps its state on failure."""
    if not requests:
        return (), {}
    if not package.family.adapters:
        raise LoraError(f"the {package.family.name} family takes no LoRA")
    maps = engine_weight_maps(package, selection)
    modules = {component: set(m.slots) | set(m.unmapped) for component, m in maps.items()}
    files = tuple(read_lora(r.path, package.family.adapters, modules, package.family.name) for r in requests)
    merged = merged_weights(package.root, maps, [(f, r.scale) for f, r in zip(files, requests, strict=True)])
    return files, merged
