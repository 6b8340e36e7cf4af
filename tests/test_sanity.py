"""Sanity flags of sample sets: variance ratio, value range, blow-up / collapse sentences."""

import torch

from mldiff.evaluate.sanity import sanity


def _fields(std: float, seed: int, channels: int = 2) -> torch.Tensor:
    return std * torch.randn(200, channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_faithful_samples_are_not_flagged_and_report_their_ratio_and_range():
    out = sanity(_fields(1.0, 1), _fields(1.0, 2), ("A", "B"))
    assert out["sanity"] == ""
    assert 0.9 < out["variance_ratio_c0"] < 1.1 and 0.9 < out["variance_ratio_c1"] < 1.1
    assert out["value_min"] < -3 and out["value_max"] > 3 and out["reference_max"] > 3


def test_a_blown_up_species_is_named_with_its_variance_ratio():
    x = _fields(1.0, 1)
    x[:, 1] *= 6.0  # variance 36x in species B only
    out = sanity(x, _fields(1.0, 2), ("A", "B"))
    assert 30 < out["variance_ratio"] < 43
    assert out["sanity"].startswith("samples blow up: variance 3") and out["sanity"].endswith(
        "x the data (B)")
    assert out["value_max"] > 4 * out["reference_max"]


def test_collapsed_and_non_finite_samples_are_flagged():
    assert sanity(_fields(0.3, 1), _fields(1.0, 2), ("A", "B"))["sanity"].startswith(
        "samples collapse: variance 0.0")
    x = _fields(1.0, 1)
    x[0, 0, 0, 0] = float("nan")
    assert sanity(x, _fields(1.0, 2), ("A", "B")) == {
        "sanity": "samples blow up: non-finite values"}
