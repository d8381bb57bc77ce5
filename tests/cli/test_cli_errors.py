"""Bad input on the command line: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.slow  # starts a process that imports torch
def test_export_unknown_model(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("export", "--model", "sd99", "--out", str(tmp_path / "p")), "unknown model 'sd99'", "tiny")


@pytest.mark.slow  # starts a process that imports torch
def test_export_missing_weights_names_both_ways_out(tmp_path: Path) -> None:
    result = run_cli("export", "--model", "sd15", "--out", str(tmp_path / "p"), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "--model-path", "--random-weights")
    assert not (tmp_path / "p").exists()


@pytest.mark.slow  # starts a process that imports torch
def test_export_unwritable_out() -> None:
    assert_one_line_error(run_cli("export", "--model", "tiny", "--out", "/proc/diffship-test/pkg"), "--out")


@pytest.mark.slow  # starts a process that imports torch
def test_export_existing_non_package_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("export", "--model", "tiny", "--out", str(tmp_path)), "not a diffship package")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # starts a process that imports torch
def test_export_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file.png"
    target.write_bytes(b"x")
    assert_one_line_error(run_cli("export", "--model", "tiny", "--out", str(target)), "is a file")


@pytest.mark.slow  # starts a process that imports torch
def test_export_model_and_model_path_together(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("export", "--model", "tiny", "--model-path", str(tmp_path), "--out", str(tmp_path / "p")), "exactly one"
    )


@pytest.mark.slow  # starts a process that imports torch
def test_export_model_path_that_is_not_a_pipeline(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("export", "--model-path", str(tmp_path), "--out", str(tmp_path / "p")), "model_index.json")


@pytest.mark.slow  # starts a process that imports torch
def test_export_model_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    result = run_cli("export", "--model-path", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p"))
    assert_one_line_error(result, f"{tmp_path / 'nowhere'} does not exist")


@pytest.mark.slow  # starts a process that imports torch
def test_export_bad_dtype(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("export", "--model", "tiny", "--dtype", "int8", "--out", str(tmp_path / "p")), "--dtype")


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        (["--steps", "0"], "num_inference_steps"),
        (["--steps", "many"], "--steps"),
        (["--guidance", "-1"], "guidance_scale"),
        (["--guidance", "nan"], "guidance_scale"),
        (["--width", "100"], "not a multiple of 8 pixels"),
        (["--height", "0"], "height"),
        (["--scheduler", "huen"], "unknown scheduler 'huen'; known: ddim, pndm"),
        (["--images", "0"], "num_images_per_prompt"),
        (["--seed", "-3"], "seed"),
        (["--out", "image.jpg"], ".png"),
        (["--grid", "colour=1,2"], "KEY one of"),
        (["--grid", "steps=1", "--grid", "guidance=1", "--grid", "seed=1"], "at most two"),
        (["--precision", "fp64"], "--precision"),
        (["--original-size", "1024,1024"], "original_size: SDXL micro-conditioning, and this package is not an SDXL"),
        (["--crop-top-left", "top,left"], "--crop-top-left"),
        (["--guidance-rescale", "2"], "guidance_rescale must be a number from 0 to 1"),
    ],
)
def test_generate_bad_input(tiny_package: Path, tmp_path: Path, arguments: list[str], fragment: str) -> None:
    result = run_cli(
        "generate", "--package", str(tiny_package), "--prompt", "a fox", "--out", str(tmp_path / "x.png"), *arguments
    )
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "x.png").exists()


@pytest.fixture
def image_files(tmp_path: Path) -> Path:
    """A 64x64 picture and masks of the same and of another size, in ``tmp_path``."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 80, 40)).save(tmp_path / "in.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask64.png")
    Image.new("L", (48, 48), 255).save(tmp_path / "mask48.png")
    return tmp_path


@pytest.mark.slow  # starts a process that imports the runtime
@pytest.mark.parametrize(
    "arguments,fragment",
    [
        (["--image", "{d}/none.png"], "cannot read"),
        (["--image", "{d}/in.png", "--mask", "{d}/mask48.png"], "mask_image is 48x48 but image is 64x64"),
        (["--image", "{d}/in.png", "--strength", "1.5"], "strength must be a number in (0, 1]"),
        (["--image", "{d}/in.png", "--strength", "0.05", "--steps", "10"], "runs no step"),
        (["--mask", "{d}/mask64.png"], "mask_image needs image"),
        (["--image", "{d}/in.png", "--grid", "strength=0.5,2"], "strength must be a number in (0, 1]"),
    ],
)
def test_generate_bad_image_input(tiny_package: Path, image_files: Path, arguments: list[str], fragment: str) -> None:
    out = image_files / "x.png"
    arguments = [a.format(d=image_files) for a in arguments]
    result = run_cli("generate", "--package", str(tiny_package), "--prompt", "a fox", "--out", str(out), *arguments)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_generate_missing_package(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("generate", "--package", str(tmp_path / "none"), "--prompt", "x"), "not a directory")


def test_generate_package_with_tampered_file(tiny_package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    onnx_file = copy / "onnx" / "unet" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    result = run_cli("generate", "--package", str(copy), "--prompt", "x", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "sha256", "model.onnx")


@pytest.mark.parametrize(
    "out,setup,fragment",
    [
        ("/proc/diffship/fox.png", None, "cannot write /proc/diffship/fox.png"),
        ("afile/fox.png", "file", "is a file, not a folder"),
        ("afolder.png", "folder", "is a folder; give a .png file path"),
        ("exists.png", "exists", "exists; pass --overwrite"),
        ("fox.jpg", None, "give a .png path"),
    ],
)
def test_generate_refuses_outputs_it_cannot_write_before_loading_anything(tmp_path: Path, out, setup, fragment) -> None:
    target = Path(out) if out.startswith("/") else tmp_path / out
    if setup == "file":
        (tmp_path / "afile").write_text("x")
    elif setup == "folder":
        target.mkdir()
    elif setup == "exists":
        target.write_bytes(b"png")
    # The package does not even exist: outputs are checked first, so a bad --out costs no model load.
    result = run_cli("generate", "--package", str(tmp_path / "no-package"), "--prompt", "a fox", "--out", str(target))
    assert_one_line_error(result, fragment)


def test_grid_without_values_is_one_line(tmp_path: Path) -> None:
    result = run_cli("generate", "--package", str(tmp_path), "--prompt", "a", "--grid", "steps=,",
                     "--out", str(tmp_path / "g.png"))
    assert_one_line_error(result, "give at least one value after steps=")


def test_a_prompt_with_bytes_that_are_not_utf8_is_one_line(tiny_package: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    argv = [sys.executable.encode(), str(ROOT / "cli.py").encode(), b"generate", b"--package", bytes(tiny_package),
            b"--prompt", b"a \xff fox", b"--steps", b"1", b"--out", bytes(tmp_path / "x.png")]
    result = subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=300, env=os.environ.copy())
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert "not valid Unicode text" in stderr


@pytest.mark.parametrize("arguments,fragment", [
    (["--original-size", "0,512"], "original_size must be a pair of positive integers (height, width)"),
    (["--crop-top-left", "-8,0"], "crops_coords_top_left must be a pair of integers >= 0 (top, left)"),
    (["--target-size", "512"], "is not two integers; give HEIGHT,WIDTH"),
    (["--aesthetic-score", "6"], "aesthetic_score conditions the SDXL refiner"),
    (["--image", "in.png", "--mask", "in.png"], "inpainting is not available for SDXL packages yet"),
    (["--denoising-end", "0.8"], "--denoising-end is where --refiner takes over: give --refiner PACKAGE too"),
    (["--refiner", "in.png", "--image", "in.png"], "--refiner finishes a text-to-image run: it takes no --grid, --image"),
])
def test_generate_bad_sdxl_input(tiny_xl_package: Path, tmp_path: Path, arguments: list[str], fragment: str) -> None:
    if "in.png" in arguments:
        from PIL import Image

        Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
        arguments = [str(tmp_path / "in.png") if a == "in.png" else a for a in arguments]
    result = run_cli("generate", "--package", str(tiny_xl_package), "--prompt", "x", "--steps", "1",
                     "--out", str(tmp_path / "o.png"), *arguments)
    assert_one_line_error(result, fragment)


def test_export_help_names_every_preset() -> None:
    from click.testing import CliRunner

    from diffship.cli import cli
    from diffship.exporter.sources import PRESETS

    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0, result.output
    model_help = result.output.split("--model TEXT")[1].split("--model-path")[0]
    words = set(" ".join(model_help.split()).replace("- ", "-").replace(",", " ").split())
    missing = [name for name in PRESETS if name not in words]
    assert missing == [], f"--model's help leaves out {missing}"
