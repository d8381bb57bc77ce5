"""The torch modules the exporter traces give diffusers' numbers: the UNet boundary that always up-samples to its skip
connections is diffusers' UNet, bit for bit, at latent sizes that are multiples of 8 (where diffusers doubles) and at
sizes that are not (where diffusers takes the skip connection's size too)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from diffship.exporter.families.stable_diffusion import UPSAMPLE_TO_SKIP, UNetBoundary  # noqa: E402
from diffship.exporter.sources import load_source  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    source = load_source("tiny")
    yield source.unet
    source.close()


@pytest.mark.parametrize("size", [(8, 8), (16, 8), (9, 13), (7, 5), (12, 20)])
def test_unet_boundary_is_diffusers_unet_at_every_size(unet, size) -> None:
    generator = torch.Generator().manual_seed(sum(size))
    sample = torch.randn((2, 4, *size), generator=generator)
    timestep = torch.tensor([901.0, 17.0])
    hidden = torch.randn((2, 77, 32), generator=generator)
    with torch.no_grad():
        expected = unet(sample, timestep, encoder_hidden_states=hidden).sample
        actual = UNetBoundary(unet).eval()(sample, timestep, hidden)
    assert torch.equal(actual, expected)


def test_the_source_unet_keeps_its_own_upsampling(unet) -> None:
    boundary = UNetBoundary(unet)
    assert boundary.unet.num_upsamplers == UPSAMPLE_TO_SKIP and unet.num_upsamplers == 3
    assert boundary.unet.conv_in is unet.conv_in  # the same weights, not a copy


def test_the_boundary_replaces_upsamplers_in_its_copy_only(unet) -> None:
    from diffship.exporter.families.stable_diffusion import SkipSizedUpsample

    boundary = UNetBoundary(unet)
    replaced = [u for block in boundary.unet.up_blocks for u in (block.upsamplers or [])]
    original = [u for block in unet.up_blocks for u in (block.upsamplers or [])]
    assert replaced and all(isinstance(u, SkipSizedUpsample) for u in replaced)
    assert not any(isinstance(u, SkipSizedUpsample) for u in original)
