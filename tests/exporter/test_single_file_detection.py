"""A checkpoint file's architecture from its tensor names and shapes (header only), the choices a plan makes before
anything is read (configs, prediction type and where it came from, VAE), and loading it through diffusers'
from_single_file with the bundled configs, offline."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from diffship.exporter.checkpoint_files import CheckpointError, inspect_checkpoint  # noqa: E402
from diffship.exporter.single_file import plan_load  # noqa: E402
from diffship.exporter.sources import SourceOptions, load_source  # noqa: E402
from scripts.make_single_file_checkpoints import differences  # noqa: E402
from tests.exporter import single_files  # noqa: E402
from tests.exporter.single_files import ARCHITECTURES, TINY_MODELS, write_tiny_file  # noqa: E402

tiny_files = single_files.tiny_files  # the session's files, shared with the other single-file tests


@pytest.mark.parametrize("model", TINY_MODELS)
def test_single_file_detects_each_architecture(model: str, tiny_files: dict[str, Path]) -> None:
    found = inspect_checkpoint(tiny_files[model])
    assert found.architecture.name == ARCHITECTURES[model]
    assert found.architecture.family == load_source(model=model).family
    assert (found.weights_dtype, found.has_vae, found.has_ema, found.pickle) == ("fp32", True, False, False)


def test_single_file_detects_half_weights_without_vae(tmp_path: Path) -> None:
    found = inspect_checkpoint(write_tiny_file("tiny-xl", tmp_path / "xl.safetensors", "fp16", include_vae=False))
    assert (found.architecture.name, found.weights_dtype, found.has_vae) == ("sdxl", "fp16", False)
    assert "fp16 weights, no VAE" in found.describe()


def test_single_file_plan_prediction_type_from_flag_sidecar_or_configs(tiny_files: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "sd2.safetensors"
    shutil.copyfile(tiny_files["tiny-v"], path)
    plan = plan_load(path, SourceOptions(config="tiny-v"))
    assert (plan.prediction_type, plan.config) == ("v_prediction", "tiny-v")  # tiny-v's scheduler
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: eps\n")  # the web UI's v1 yaml
    plan = plan_load(path, SourceOptions(config="tiny-v"))
    assert plan.prediction_type == "epsilon" and "sd2.yaml" in plan.prediction_from
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert plan_load(path, SourceOptions(config="tiny-v")).prediction_type == "v_prediction"
    flagged = plan_load(path, SourceOptions(config="tiny-v", prediction_type="epsilon"))
    assert (flagged.prediction_type, flagged.prediction_from) == ("epsilon", "--prediction-type")
    # Without --config, an SD 2.x file gets the full-size configs (which a tiny file does not fit, as the refusal
    # says): 768 v-prediction, or the 512 base for epsilon.
    with pytest.raises(CheckpointError, match="the sd21-base configs"):
        plan_load(path, SourceOptions(prediction_type="epsilon"))
    path.with_suffix(".yaml").unlink()
    with pytest.raises(CheckpointError, match="the sd21 configs"):
        plan_load(path, SourceOptions())


def test_single_file_plan_refuses_configs_of_another_architecture(tiny_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="choose matching configs"):
        plan_load(tiny_files["tiny"], SourceOptions(config="tiny-xl"))
    with pytest.raises(CheckpointError, match="9-channel"):
        plan_load(tiny_files["tiny"], SourceOptions(config="tiny-inpaint"))
    with pytest.raises(CheckpointError, match="not a bundled config"):
        plan_load(tiny_files["tiny"], SourceOptions(config="nope"))


def test_single_file_without_vae_needs_one(tmp_path: Path) -> None:
    path = write_tiny_file("tiny", tmp_path / "novae.safetensors", include_vae=False)
    with pytest.raises(CheckpointError, match="has no VAE.*--vae FILE_OR_FOLDER"):
        plan_load(path, SourceOptions(config="tiny"))


def test_single_file_loads_the_weights_it_was_written_from(tiny_files: dict[str, Path]) -> None:
    expected = load_source(model="tiny-xl-refiner")
    source = load_source(model_path=tiny_files["tiny-xl-refiner"], options=SourceOptions(config="tiny-xl-refiner"))
    assert source.weights_sha256() == expected.weights_sha256()
    assert source.pipeline_options == expected.pipeline_options == {"force_zeros_for_empty_prompt": False,
                                                                     "requires_aesthetics_score": True}
    assert source.scheduler_config() == expected.scheduler_config()
    info = source.info
    assert (info["kind"], info["architecture"], info["config"], info["overrides"]) == (
        "single_file", "sdxl-refiner", "tiny-xl-refiner", {"config": "tiny-xl-refiner"})
    assert len(info["file_sha256"]) == 64 and info["path"] == str(tiny_files["tiny-xl-refiner"].resolve())


def test_single_file_fp16_without_vae_takes_the_vae_given(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    original = load_source(model="tiny-xl")
    path = write_tiny_file("tiny-xl", tmp_path / "xl-fp16.safetensors", "fp16", include_vae=False)
    # --vae as a file in the original layout: the VAE inside another checkpoint of the same model.
    source = load_source(model_path=path, options=SourceOptions(config="tiny-xl", vae=tiny_files["tiny-xl"]))
    assert list(differences(original.vae, source.vae)) == []
    for name in ("unet", "text_encoder", "text_encoder_2"):
        rounded = copy.deepcopy(original.modules()[name]).half().float()
        assert list(differences(rounded, source.modules()[name])) == [], name
    assert source.info["overrides"]["vae"] == str(tiny_files["tiny-xl"].resolve())
    assert source.info["weights_dtype"] == "fp16"


def test_single_file_vae_from_a_diffusers_folder(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    original = load_source(model="tiny")
    original.vae.save_pretrained(tmp_path / "vae")
    path = write_tiny_file("tiny", tmp_path / "novae.safetensors", include_vae=False)
    source = load_source(model_path=path, options=SourceOptions(config="tiny", vae=tmp_path / "vae"))
    assert list(differences(original.vae, source.vae)) == []


def test_single_file_ckpt_read_with_weights_only_when_allowed(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(tiny_files["tiny"])), "global_step": 1}, ckpt)
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        inspect_checkpoint(ckpt)
    found = inspect_checkpoint(ckpt, allow_pickle=True)
    assert (found.architecture.name, found.pickle) == ("sd1", True)
    source = load_source(model_path=ckpt, options=SourceOptions(config="tiny", allow_pickle=True))
    assert source.weights_sha256() == load_source(model="tiny").weights_sha256()
    assert source.info["overrides"]["allow_pickle"] is True


class NotATensor:
    def __reduce__(self):  # what a hostile pickle does: name a callable to run at load time
        return (print, ("this must never run",))


def test_single_file_ckpt_with_code_is_refused_without_running_it(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": NotATensor()}}, ckpt)
    with pytest.raises(CheckpointError, match="weights_only=True.*nothing in it was executed"):
        inspect_checkpoint(ckpt, allow_pickle=True)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("model", TINY_MODELS)
def test_single_file_at_other_widths_names_the_configs_that_fit(model: str, tiny_files: dict[str, Path]) -> None:
    # Detection picks the full-size configs; a tiny file does not fit them, and the bundled tiny ones are named.
    with pytest.raises(CheckpointError, match=f"32 wide .* pass --config {model}$"):
        plan_load(tiny_files[model], SourceOptions())


def test_single_file_unreadable_sidecar_is_one_error(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "sd1.safetensors"
    shutil.copyfile(tiny_files["tiny"], path)
    path.with_suffix(".yaml").write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match="sd1.yaml .* is not valid YAML"):
        plan_load(path, SourceOptions(config="tiny"))


def test_single_file_sd2_text_encoder_in_the_transformers_layout(tmp_path: Path) -> None:
    from scripts.make_single_file_checkpoints import to_original, write_checkpoint

    original = load_source(model="tiny-v")
    path = write_checkpoint(to_original(original, clip_layout="hf"), tmp_path / "sd2-hf.safetensors")
    assert inspect_checkpoint(path).architecture.name == "sd2"
    source = load_source(model_path=path, options=SourceOptions(config="tiny-v"))
    assert source.weights_sha256() == original.weights_sha256()


def test_single_file_with_an_ema_copy_exports_the_non_ema_weights(tmp_path: Path,
                                                                   tiny_files: dict[str, Path]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_files["tiny"]))
    # The LDM trainer's EMA copy: model_ema.<UNet name without its dots>; zeros here, so using it would show.
    ema = {"model_ema." + "".join(k.split(".")[1:]): torch.zeros_like(v) for k, v in tensors.items()
           if k.startswith("model.diffusion_model.")}
    save_file({**tensors, **ema, "model_ema.num_updates": torch.tensor(7)}, str(tmp_path / "ema.safetensors"))
    found = inspect_checkpoint(tmp_path / "ema.safetensors")
    assert found.has_ema and "EMA copy ignored" in found.describe()
    source = load_source(model_path=tmp_path / "ema.safetensors", options=SourceOptions(config="tiny"))
    assert source.weights_sha256() == load_source(model="tiny").weights_sha256()
