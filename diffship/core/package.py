"""``ModelPackage``: a package folder and its manifest; the one place files are resolved, checked and recorded.

The exporter writes a package; the engine builders add engine sets to it; the runtime reads it. Every path a manifest
names is resolved inside the package root (a manifest cannot point a loader at a file elsewhere), every file is
checked against its sha256 before use, and manifest updates are read-modify-write under a lock, so that ``build-ort``
and ``build-trt`` on one package at the same time both land.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffship.core.errors import PackageError, command
from diffship.core.families import Family, get_family
from diffship.core.files import locked, write_json_atomic
from diffship.core.integrity import file_digest
from diffship.core.manifest import DTYPES, MANIFEST_NAME, ComponentVariant, Manifest
from diffship.core.specs import PipelineConstants

LOCK_NAME = ".manifest.lock"


def is_package(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(root: Path) -> Manifest:
    manifest_path = root / MANIFEST_NAME
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{manifest_path} cannot be read: {exc}") from exc
    try:
        return Manifest.from_json(data)
    except PackageError as exc:
        raise PackageError(f"{manifest_path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PackageError(f"{manifest_path} is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class ModelPackage:
    """A package directory and its parsed manifest."""

    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> ModelPackage:
        root = Path(root)
        if not root.is_dir():
            what = "it is a file" if root.exists() else "it does not exist"
            raise PackageError(f"{root} is not a directory ({what}); a package is a folder: export one with "
                               f"`{command(f'export --model NAME --out {root}')}` (or --model-path DIR for your own)")
        if not is_package(root):
            if (root / "model_index.json").is_file():
                raise PackageError(f"{root} is a diffusers pipeline folder, not a diffship package; export it with "
                                   f"`{command(f'export --model-path {root} --out PACKAGE')}`")
            raise PackageError(f"{root} is not a diffship model package (no {MANIFEST_NAME})")
        return cls(root=root, manifest=read_manifest(root))

    @property
    def constants(self) -> PipelineConstants:
        return self.manifest.constants

    @property
    def family(self) -> Family:
        return get_family(self.manifest.family)

    def vocab_size(self, component: str) -> int:
        """How many token ids text encoder ``component`` takes: recorded at export, or, for packages exported before
        it was, counted in its own tokenizer's ``vocab.json`` (checked against the manifest first)."""
        encoder = self.constants.text_encoder(component)
        if encoder.vocab_size is not None:
            return encoder.vocab_size
        path = self.verify_file(f"{encoder.tokenizer}/vocab.json")
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"{path} is not valid UTF-8 JSON ({exc})") from None
        if not isinstance(vocab, dict) or not vocab:
            raise PackageError(f"{path} must be a non-empty JSON object of tokens and ids")
        return len(vocab)

    def path(self, relative: str) -> Path:
        """``relative`` inside the package; a path that would lead outside it (``..``, absolute, a symlink out) is
        refused."""
        candidate = self.root / relative
        root = self.root.resolve()
        resolved = candidate.resolve()
        if Path(relative).is_absolute() or (resolved != root and root not in resolved.parents):
            raise PackageError(f"{self.root / MANIFEST_NAME} names {relative!r}, which lies outside the package")
        return candidate

    def dtypes(self) -> list[str]:
        """Precisions every component was exported in."""
        variant_sets = [set(v) for v in self.manifest.components.values()]
        common = set.intersection(*variant_sets) if variant_sets else set()
        return [d for d in DTYPES if d in common]

    def variant(self, component: str, dtype: str) -> ComponentVariant:
        variants = self.manifest.components.get(component)
        if variants is None:
            raise PackageError(
                f"package {self.root} has no component {component!r} (it has {', '.join(self.manifest.components)})"
            )
        if dtype not in DTYPES:
            raise PackageError(f"{dtype!r} is not an export precision; packages hold {' and '.join(DTYPES)} exports "
                               "(int8 engines come from build-ort --precision int8)")
        if dtype not in variants:
            raise PackageError(
                f"package {self.root} has no {dtype} export of {component} (it has {', '.join(variants)}); "
                f"export one with `{command(f'export ... --dtype {dtype}')}`"
            )
        return variants[dtype]

    def verify_file(self, relative: str) -> Path:
        """The path of ``relative`` after checking its size and sha256 against the manifest."""
        entry = self.manifest.files.get(relative)
        path = self.path(relative)
        if entry is None:
            raise PackageError(f"{relative} is not listed in {self.root / MANIFEST_NAME}")
        if not path.is_file():
            raise PackageError(f"{path} is listed in the manifest but missing")
        if path.stat().st_size != entry.bytes or file_digest(path) != entry.sha256:
            raise PackageError(
                f"{path} does not match the sha256 recorded in the manifest: the file was modified or is incomplete; "
                "re-export the package (or rebuild the engines)"
            )
        return path

    def verify_all(self) -> list[str]:
        """Problems with any listed file (missing, wrong size or digest); empty when the package is intact."""
        problems = []
        for relative in self.manifest.files:
            try:
                self.verify_file(relative)
            except PackageError as exc:
                problems.append(str(exc))
        return problems

    def write_manifest(self, manifest: Manifest) -> ModelPackage:
        """Replace the manifest (for a package being assembled; a published package uses ``update_manifest``)."""
        write_json_atomic(self.root / MANIFEST_NAME, manifest.to_json())
        return ModelPackage(self.root, manifest)

    def update_manifest(self, change: Callable[[Manifest], Manifest]) -> ModelPackage:
        """Apply ``change`` to the manifest as it is on disk now, under the package's lock, and write it back."""
        with locked(self.root / LOCK_NAME):
            current = read_manifest(self.root)
            return self.write_manifest(change(current))
