"""The one build orchestrator every backend's builder runs through (docs/design.md, "Engine builds").

For each component: cache key -> skip when up to date -> work folder -> the backend compiles -> the result is checked
against the source ONNX -> its files move into ``engines/<set>/`` with one rename each -> the manifest records them,
under the package's lock. An interrupted build leaves only a hidden work folder, never a listed engine half-written,
and the next build removes what a killed one left; two builds of different sets on one package at the same time both
land.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from diffship.core.files import publish_files, remove_stale_work, work_folder
from diffship.core.manifest import ComponentVariant, EngineEntry, EngineSet, Manifest
from diffship.core.package import ModelPackage
from diffship.core.progress import ElapsedLog
from diffship.core.specs import CACHE_COMPONENTS
from diffship.engines.errors import EngineError

log = logging.getLogger(__name__)


SettingsT = TypeVar("SettingsT")
"""A backend's per-component build settings (a frozen dataclass of its own), made by ``job``, read by ``compile``."""
DetailsT = TypeVar("DetailsT")
"""What a backend's ``compile`` reports about one engine (a frozen dataclass of its own)."""
CheckT = TypeVar("CheckT")
"""What a backend's ``verify`` found (a frozen dataclass of its own)."""
CheckT_co = TypeVar("CheckT_co", covariant=True)


@dataclass(frozen=True)
class BuildJob(Generic[SettingsT]):
    """One component to build: the ONNX it is built from, the key of everything that goes into it, and the backend's
    own settings for it (route, profile, ...), handed back to ``compile``."""

    component: str
    source: ComponentVariant
    source_sha256: str
    """Digest of the source ONNX file, recorded with the engine."""
    key: str
    settings: SettingsT


@dataclass(frozen=True)
class Compiled(Generic[DetailsT]):
    """What a backend compiled into the work folder."""

    files: tuple[str, ...]
    """File names in the work folder, in the order they are published (a file that names another last)."""
    seconds: float
    details: DetailsT


class EngineBuilder(Protocol[SettingsT, DetailsT, CheckT_co]):
    """A backend's build-time half: what the orchestrator asks of it, component by component."""

    @property
    def backend(self) -> str:
        """The ``backend`` its engine sets record (``ort``, ``trt``, ``trt-rtx``)."""
        ...

    def set_name(self, package: ModelPackage) -> str:
        """The ``engines/`` folder (and manifest key) this build writes."""
        ...

    def job(self, package: ModelPackage, component: str, progress: Callable[[str], None]) -> BuildJob[SettingsT]: ...

    def compile(
        self, package: ModelPackage, job: BuildJob[SettingsT], work: Path, progress: Callable[[str], None]
    ) -> Compiled[DetailsT]: ...

    def verify(
        self, package: ModelPackage, job: BuildJob[SettingsT], compiled: Compiled[DetailsT], work: Path,
        progress: Callable[[str], None],
    ) -> CheckT_co:
        """Check the compiled engine against the source ONNX; raise EngineError when it misses the bar."""
        ...

    def entry(self, set_name: str, job: BuildJob[SettingsT], compiled: Compiled[DetailsT]) -> EngineEntry: ...

    def engine_set(self, set_name: str, components: Mapping[str, EngineEntry]) -> EngineSet:
        """The set record with ``components``, the set-level fields taken from this build."""
        ...


@dataclass(frozen=True)
class ComponentOutcome(Generic[DetailsT, CheckT]):
    component: str
    skipped: bool
    """Up to date: found built with the same key, nothing compiled (``details`` and ``verification`` are None)."""
    entry: EngineEntry
    seconds: float
    details: DetailsT | None = None
    """What ``compile`` reported (the backend's record); None when skipped."""
    verification: CheckT | None = None
    """What ``verify`` found (the backend's record); None when skipped."""


@dataclass(frozen=True)
class BuildOutcome(Generic[DetailsT, CheckT]):
    engine_set: str
    folder: Path
    components: tuple[ComponentOutcome[DetailsT, CheckT], ...]
    seconds: float


def build_engine_set(
    package_path: Path,
    builder: EngineBuilder[SettingsT, DetailsT, CheckT],
    components: Sequence[str] | None = None,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> BuildOutcome[DetailsT, CheckT]:
    """Build (or find up to date) ``builder``'s engine for every component in ``components`` (None: every component
    of the package, so that text-to-image, image-to-image and inpainting all run on the set)."""
    progress = ElapsedLog(log, on_progress)
    package = ModelPackage.open(package_path)
    _remove_stale_work(package)
    components = [c for c in package.manifest.components if c not in CACHE_COMPONENTS] if components is None \
        else list(components)
    unknown = [c for c in components if c not in package.manifest.components]
    if unknown:
        raise EngineError(f"package has no {', '.join(unknown)}; components: {', '.join(package.manifest.components)}")
    name = builder.set_name(package)
    outcomes: list[ComponentOutcome[DetailsT, CheckT]] = []
    for component in components:
        package = ModelPackage.open(package_path)  # earlier components (or another build) may have changed it
        job = builder.job(package, component, progress)
        package = ModelPackage.open(package_path)  # the job may have added to it (an fp16 conversion)
        existing = _existing_entry(package.manifest, name, component)
        if not force and existing is not None and existing.key == job.key and _files_present(package, existing):
            progress(f"{component}: up to date (engines/{name}); --force rebuilds")
            outcomes.append(ComponentOutcome(component, True, existing, 0.0))
            continue
        for relative in job.source.files:
            package.verify_file(relative)
        with work_folder(package.path("engines"), f"build-{component}") as work:
            compiled = builder.compile(package, job, work, progress)
            verification = builder.verify(package, job, compiled, work, progress)
            entry = builder.entry(name, job, compiled)
            publish_files(work, compiled.files, package.path(f"engines/{name}"))
            _record(package, builder, name, entry, [f"engines/{name}/{file}" for file in compiled.files])
        outcomes.append(ComponentOutcome(component, False, entry, compiled.seconds, compiled.details, verification))
    return BuildOutcome(name, package.path(f"engines/{name}"), tuple(outcomes), progress.elapsed)


def _record(
    package: ModelPackage, builder: EngineBuilder[SettingsT, DetailsT, CheckT], set_name: str, entry: EngineEntry,
    published: list[str],
) -> None:
    """Add one finished engine to its set in the manifest as it is on disk now (another build may have added
    others meanwhile)."""

    def change(manifest: Manifest) -> Manifest:
        current = manifest.engines.get(set_name)
        kept = dict(current.components) if current is not None and current.backend == builder.backend else {}
        engine_set = builder.engine_set(set_name, {**kept, entry.component: entry})
        return manifest.with_engine_set(engine_set, package.root, published)

    package.update_manifest(change)


def _remove_stale_work(package: ModelPackage) -> None:
    """Remove what killed builds left (in ``engines/``, and beside each component's ONNX, where fp16 conversions
    stage), at the start of every build, whether or not it compiles anything; a live build's folders stay."""
    folders = {package.path("engines")}
    folders.update(package.path(variant.onnx).parent for variants in package.manifest.components.values()
                   for variant in variants.values())
    for folder in sorted(folders):
        remove_stale_work(folder)


def _existing_entry(manifest: Manifest, set_name: str, component: str) -> EngineEntry | None:
    engine_set = manifest.engines.get(set_name)
    return engine_set.components.get(component) if engine_set is not None else None


def _files_present(package: ModelPackage, entry: EngineEntry) -> bool:
    """Listed, there and of the recorded size (a full digest check happens when the engine is opened)."""
    for relative in entry.files:
        listed = package.manifest.files.get(relative)
        path = package.path(relative)
        if listed is None or not path.is_file() or path.stat().st_size != listed.bytes:
            return False
    return True
