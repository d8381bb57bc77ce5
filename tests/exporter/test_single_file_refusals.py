"""What is not an exportable checkpoint gets one line from export that says what the file is and what export takes,
exit status 2, and nothing in --out: LoRAs (peft and kohya), an embedding, a ControlNet, a VAE alone, another
architecture, a truncated or non-safetensors file, a pickle without --allow-pickle, SDXL inpainting."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from diffship.exporter.checkpoint_files import CheckpointError, inspect_checkpoint  # noqa: E402
from diffship.exporter.sources import load_source  # noqa: E402
from tests.cli.test_cli_errors import assert_one_line_error  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.exporter import single_files  # noqa: E402

tiny_files = single_files.tiny_files


def lora(folder: Path, kohya: bool) -> Path:
    from diffship.tools.make_lora import make_lora, to_kohya

    source = load_source(model="tiny")
    source.unet.save_pretrained(folder / "model" / "unet")
    source.text_encoders["text_encoder"].save_pretrained(folder / "model" / "text_encoder")
    peft = make_lora(folder / "model", folder / "lora.safetensors")
    return to_kohya(peft, folder / "lora_kohya.safetensors") if kohya else peft


def embedding(folder: Path) -> Path:
    # The web UI's textual-inversion file: the learned vectors under emb_params.
    out = folder / "embedding.safetensors"
    save_file({"emb_params": torch.randn(2, 768)}, str(out))
    return out


def controlnet(folder: Path) -> Path:
    from diffusers import ControlNetModel

    out = folder / "controlnet.safetensors"
    save_file(ControlNetModel.from_unet(load_source(model="tiny").unet).state_dict(), str(out))
    return out


def vae_alone(folder: Path, checkpoint: Path) -> Path:
    out = folder / "vae.safetensors"
    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(str(checkpoint)).items()
               if k.startswith("first_stage_model.")}, str(out))
    return out


def transformer(folder: Path) -> Path:
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                  pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16)
    out = folder / "sd3.safetensors"
    save_file(model.state_dict(), str(out))
    return out


def truncated(folder: Path, checkpoint: Path) -> Path:
    out = folder / "truncated.safetensors"
    data = checkpoint.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def not_safetensors(folder: Path) -> Path:
    out = folder / "model.safetensors"
    out.write_text("<html>Rate limit exceeded</html>\n")  # what a failed download often saves
    return out


def pickle(folder: Path, checkpoint: Path) -> Path:
    out = folder / "model.ckpt"
    torch.save({"state_dict": load_file(str(checkpoint))}, out)
    return out


CASES = {
    "lora-peft": (lambda d, c: lora(d, kohya=False), ["is a LoRA", "--lora"]),
    "lora-kohya": (lambda d, c: lora(d, kohya=True), ["is a LoRA", "--lora"]),
    "embedding": (lambda d, c: embedding(d), ["textual-inversion embedding"]),
    "controlnet": (lambda d, c: controlnet(d), ["is a ControlNet"]),
    "vae": (vae_alone, ["is a VAE alone", "--vae"]),
    "sd3": (lambda d, c: transformer(d), ["SD3/Flux-style", "export takes"]),
    "truncated": (truncated, ["is truncated", "download it again"]),
    "not-safetensors": (lambda d, c: not_safetensors(d), ["not a safetensors file", "export takes"]),
    "pickle": (pickle, ["is a pickle", "--allow-pickle"]),
}


@pytest.mark.slow  # one process per case, each importing torch
@pytest.mark.parametrize("case", list(CASES))
def test_single_file_refusal_is_one_line_and_leaves_nothing(case: str, tmp_path: Path,
                                                            tiny_files: dict[str, Path]) -> None:
    make, fragments = CASES[case]
    path = make(tmp_path, tiny_files["tiny"])
    with pytest.raises(CheckpointError):
        inspect_checkpoint(path)
    out = tmp_path / "out" / "package"
    assert_one_line_error(run_cli("export", "--model-path", str(path), "--out", str(out)), *fragments)
    assert not (tmp_path / "out").exists()  # refused before --out, its parent or a staging folder is made


def test_single_file_sdxl_inpainting_is_named_and_refused(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    tensors = load_file(str(tiny_files["tiny-xl"]))
    conv_in = tensors["model.diffusion_model.input_blocks.0.0.weight"]
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([conv_in, conv_in, conv_in[:, :1]], dim=1)
    save_file(tensors, str(tmp_path / "xl-inpaint.safetensors"))
    with pytest.raises(CheckpointError, match="SDXL inpainting checkpoint \\(9-channel UNet\\)"):
        inspect_checkpoint(tmp_path / "xl-inpaint.safetensors")


def test_single_file_options_are_refused_where_they_do_not_apply(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    from diffship.exporter.sources import SourceError, SourceOptions, check_source_arguments

    with pytest.raises(SourceError, match="--prediction-type apply to --model-path"):
        check_source_arguments("tiny", None, False, SourceOptions(prediction_type="epsilon"))
    with pytest.raises(SourceError, match="--variant apply to diffusers folders"):
        check_source_arguments(None, tiny_files["tiny"], False, SourceOptions(variant="fp16"))
    with pytest.raises(SourceError, match="--config apply to single-file checkpoints"):
        check_source_arguments(None, tmp_path, False, SourceOptions(config="tiny"))
