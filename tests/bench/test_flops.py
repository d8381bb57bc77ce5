"""The FLOP count behind the UNet's arithmetic floor (``bench.flops.flop_counter``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from diffship.bench.flops import flop_counter  # noqa: E402


def test_flop_counter_counts_cpu_fused_attention_as_its_two_matrix_products() -> None:
    query, key, value = (torch.randn(2, 8, length, 40) for length in (256, 77, 77))
    with torch.inference_mode(), flop_counter() as fused:
        torch.nn.functional.scaled_dot_product_attention(query, key, value)
    with torch.inference_mode(), flop_counter() as unfused:
        scores = torch.softmax(query @ key.transpose(-1, -2) / 40**0.5, dim=-1)
        _ = scores @ value
    # torch's own formula for batched matrix products is the reference; the softmax is not counted by either.
    assert fused.get_total_flops() == unfused.get_total_flops() > 0
