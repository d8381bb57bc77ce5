"""``cli.py serve --package A --package B`` and ``--lora-dir``: what cannot work is one error line, exit status 2,
before anything starts."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_serve_refuses_two_packages_of_one_name(tiny_package: Path, tmp_path: Path) -> None:
    (tmp_path / tiny_package.name).symlink_to(tiny_package)
    result = run_cli("serve", "--package", str(tiny_package), "--package", str(tmp_path / tiny_package.name))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: two packages are named {tiny_package.name}: packages are known by their folder's name, so give "
        "folders distinct names")


def test_serve_refuses_several_packages_or_a_lora_dir_under_ray(tiny_package: Path, tiny_v_package: Path,
                                                                tmp_path: Path) -> None:
    several = run_cli("serve", "--package", str(tiny_package), "--package", str(tiny_v_package), "--ray")
    loras = run_cli("serve", "--package", str(tiny_package), "--lora-dir", str(tmp_path), "--ray")
    missing = run_cli("serve", "--package", str(tiny_package), "--lora-dir", str(tmp_path / "gone"))
    for result in (several, loras):
        assert result.returncode == 2 and "needs the single-process server (leave out --ray)" in result.stderr
    assert missing.returncode == 2 and f"{tmp_path / 'gone'} is not a folder" in missing.stderr
    assert all("Traceback" not in r.stderr for r in (several, loras, missing))


def test_serve_help_explains_packages_and_lora_dir() -> None:
    result = run_cli("serve", "--help")
    assert "--package packages/sd15 --package packages/dreamshaper" in " ".join(result.stdout.split())
    assert "--lora-dir loras/" in result.stdout
