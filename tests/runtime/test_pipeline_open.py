"""``Pipeline.from_package``'s refusals say what was wrong and what is allowed, before any engine opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffship.core.errors import PackageError
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from tests.fakes import write_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


@pytest.mark.parametrize("path", [42, None, ["packages/tiny"]])
def test_pipeline_open_refuses_a_path_that_is_not_one(path: object) -> None:
    with pytest.raises(PipelineInputError, match="from_package takes the path of a package folder"):
        Pipeline.from_package(path)  # type: ignore[arg-type]


def test_pipeline_open_refuses_a_precision_no_package_holds(package: Path) -> None:
    with pytest.raises(PackageError, match="'bf16' is not an export precision; packages hold fp32 and fp16"):
        Pipeline.from_package(package, backend="ort", precision="bf16", device="cpu")
