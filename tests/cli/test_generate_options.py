"""``generate``'s options from the command line, on a package of numpy engines (tests/fakes.py): negative prompts
per prompt, ``--seed -1``, a backend from the registry, and the refusals, each before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from diffship.cli import cli
from diffship.engines.backend import register_backend
from tests.cli.test_cli_errors import assert_one_line_error
from tests.conftest import ROOT, run_cli
from tests.fakes import NumpyBackend, write_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_backend("numpy", NumpyBackend)  # as tests/runtime do: numpy functions behind the Backend protocol
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


def generate(package: Path, out: Path, *arguments: str) -> list[dict[str, object]]:
    """Run ``generate`` on the numpy backend; the parameters recorded in each PNG written."""
    result = CliRunner().invoke(cli, ["generate", "--package", str(package), "--backend", "numpy", "--steps", "2",
                                      "--guidance", "3", "--out", str(out), *arguments])
    assert result.exit_code == 0, result.output
    written = sorted(out.parent.glob(f"{out.stem}*.png"))
    parameters = []
    for path in written:
        with Image.open(path) as image:
            parameters.append(json.loads(image.text["diffship"]))
    return parameters


def test_generate_negative_prompt_once_per_prompt(package: Path, tmp_path: Path) -> None:
    written = generate(package, tmp_path / "pair.png", "--prompt", "a red fox", "--negative-prompt", "blurry",
                       "--prompt", "a cat", "--negative-prompt", "dogs", "--images", "2", "--seed", "5")
    assert [(p["prompt"], p["negative_prompt"]) for p in written] == [
        ("a red fox", "blurry"), ("a red fox", "blurry"), ("a cat", "dogs"), ("a cat", "dogs")]


def test_generate_one_negative_prompt_serves_every_prompt(package: Path, tmp_path: Path) -> None:
    written = generate(package, tmp_path / "pair.png", "--prompt", "a red fox", "--prompt", "a cat",
                       "--negative-prompt", "blurry")
    assert [p["negative_prompt"] for p in written] == ["blurry", "blurry"]


def test_generate_negative_prompts_that_match_neither_count_are_one_line(tmp_path: Path) -> None:
    result = run_cli("generate", "--package", str(tmp_path / "none"), "--prompt", "a", "--prompt", "b", "--prompt",
                     "c", "--negative-prompt", "x", "--negative-prompt", "y", "--out", str(tmp_path / "o.png"))
    assert_one_line_error(result, "2 --negative-prompt for 3 --prompt", "one for every prompt, or one per --prompt")


def test_generate_seed_minus_one_is_random_and_printed(package: Path, tmp_path: Path) -> None:
    seeds = set()
    for run in range(3):
        out = tmp_path / f"r{run}.png"
        result = CliRunner().invoke(cli, ["generate", "--package", str(package), "--backend", "numpy", "--prompt", "a",
                                          "--steps", "1", "--seed", "-1", "--out", str(out)])
        assert result.exit_code == 0, result.output
        with Image.open(out) as image:
            seed = json.loads(image.text["diffship"])["seed"]
        assert f"wrote {out}  (seed {seed})" in result.output and seed >= 0
        seeds.add(seed)
    assert len(seeds) > 1  # three draws from 2**31 seeds


def test_generate_seed_below_minus_one_says_what_is_allowed(tmp_path: Path) -> None:
    result = run_cli("generate", "--package", str(tmp_path / "none"), "--prompt", "a", "--seed", "-2")
    assert_one_line_error(result, "--seed", "-2 is not a seed: give 0 or more, or -1 for a random one")


def test_generate_lora_scale_that_is_not_a_number_says_so(tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    result = run_cli("generate", "--package", str(tmp_path / "none"), "--prompt", "a", "--lora", f"{lora}:abc")
    assert_one_line_error(result, "--lora", f"LoRA {lora}:abc: the scale after ':' must be a number", "got 'abc'")


def test_generate_backend_choices_come_from_the_registry(tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from diffship.engines.backend import register_backend\n"
        "from tests.fakes import NumpyBackend, write_package\n"
        "import cli\n"
        f"package = write_package(Path({str(tmp_path / 'pkg')!r}))\n"
        f"argv = ['generate', '--package', str(package), '--prompt', 'a fox', '--steps', '1', '--out', {str(out)!r},"
        " '--backend', 'numpy-plugin']\n"
        "assert cli.main(argv) == 2  # not registered yet\n"
        "register_backend('numpy-plugin', NumpyBackend)\n"
        "sys.exit(cli.main(argv))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "'numpy-plugin' is not one of 'ort', 'trt'" in result.stderr
    with Image.open(out) as image:
        assert json.loads(image.text["diffship"])["backend"] == "numpy"
