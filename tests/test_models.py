"""Score networks: shapes, resolution consistency, conditioning, registry, training sanity."""

from __future__ import annotations

import math

import pytest
import torch

from mldiff.errors import MldiffError
from mldiff.models import FNO, UNet, build_model, count_parameters, estimate_flops, fno
from mldiff.models.fno import SpectralConv2d
from mldiff.spectral import cell_centres, dct2, forward, inverse, wavenumber_squared

BOUNDARIES = ("periodic", "neumann")


def band_limited(n: int, boundary: str, amplitude: float, seed: int = 1) -> torch.Tensor:
    """``(1, 1, n, n)`` float64 samples of one fixed field on [-1, 1]², the same function at
    every ``n``: ``amplitude · Σ a_m cos(π m_y y' + π m_x x' + φ_m)/5`` over ``|m| <= 2``, with
    ``(y', x') = (y, x)`` (periodic) or a cosine polynomial in ``((y+1)/2, (x+1)/2)`` (neumann)."""
    g = torch.Generator().manual_seed(seed)
    y, x = cell_centres(n)[:, None], cell_centres(n)[None, :]
    if boundary == "neumann":
        y, x = (y + 1) / 2, (x + 1) / 2
    field = torch.zeros(n, n, dtype=torch.float64)
    for my in range(3):
        for mx in range(-2, 3):
            a, phase = torch.randn(2, generator=g, dtype=torch.float64)
            if boundary == "periodic":
                field += a * torch.cos(math.pi * (my * y + mx * x) + phase)
            elif mx >= 0:
                field += a * torch.cos(math.pi * my * y) * torch.cos(math.pi * mx * x)
    return (amplitude * field / 5)[None, None]


def fourier_series(u: torch.Tensor, band: int) -> torch.Tensor:
    """Grid-independent Fourier coefficients ``û(k)``, ``|k_y|, k_x <= band``, of
    ``u = Σ û(k) e^{iπ k·(x+1)}`` sampled at cell centres: the DFT with the half-cell phase
    ``e^{iπ k / n}`` per axis removed."""
    n = u.shape[-1]
    my = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    mx = torch.arange(n // 2 + 1, dtype=torch.float64)
    c = torch.fft.rfft2(u, norm="forward") * torch.exp(-1j * math.pi * (my[:, None] + mx) / n)
    return torch.cat([c[..., : band + 1, : band + 1], c[..., n - band :, : band + 1]], dim=-2)


def cosine_series(u: torch.Tensor, band: int) -> torch.Tensor:
    """Grid-independent cosine coefficients (up to fixed per-mode factors), ``m < band``."""
    return dct2(u)[..., :band, :band] / u.shape[-1]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("n", [16, 17, 24])
def test_fno_maps_any_supported_grid_to_same_shape(boundary: str, n: int) -> None:
    net = FNO(3, 2, width=8, modes=8, layers=2, boundary=boundary)
    out = net(torch.randn(4, 3, n, n), torch.rand(4))
    assert out.shape == (4, 2, n, n)
    assert torch.isfinite(out).all()


def test_fno_periodic_is_resolution_consistent() -> None:
    """Same weights, one band-limited input sampled at 32, 64 and 128: the outputs' Fourier
    coefficients agree on the 32 grid's band. The small 32-vs-64 residual is the aliasing of
    the spectrum GELU creates above 32's Nyquist; between 64 and 128 it is round-off."""
    net = FNO(1, 1, width=16, modes=8, layers=3).double()
    t = torch.tensor([0.3], dtype=torch.float64)
    c32, c64, c128 = (
        fourier_series(net(band_limited(n, "periodic", 1.0), t), 15) for n in (32, 64, 128)
    )
    assert relative_error(c32, c64) < 1e-6
    assert relative_error(c64, c128) < 1e-12


def test_fno_neumann_is_resolution_consistent_as_a_cosine_series() -> None:
    """Neumann (even reflection): the output is the restriction of an even function, i.e. a
    cosine series; for a cosine-band-limited input its coefficients at 32 and 64 agree (the
    doubled period halves the aliasing, so to round-off here)."""
    net = FNO(1, 1, width=16, modes=8, layers=3, boundary="neumann").double()
    t = torch.tensor([0.7], dtype=torch.float64)
    coarse, fine = (cosine_series(net(band_limited(n, "neumann", 1.0), t), 31) for n in (32, 64))
    assert relative_error(coarse, fine) < 1e-12


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_spectral_conv_is_a_multiplier_on_the_kept_fourier_modes(boundary: str) -> None:
    """Reference: ``irfft2(R · rfft2(u))`` with ``R`` nonzero on ``|k_y|, k_x < modes``.
    Neumann: the same on the (2n, 2n) mirror image with ``R(|k_y|, k_x)`` real, restricted to
    the original quadrant (even reflection)."""
    n, modes = 12, 5
    layer = SpectralConv2d(2, 3, modes, boundary, torch.Generator().manual_seed(3)).double()
    u = torch.randn(4, 2, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weight = layer.weight.movedim((0, 1), (-2, -1))  # (C_in, C_out, rows, modes[, 2])
    if boundary == "periodic":
        weight = torch.view_as_complex(weight.movedim(2, -1).contiguous())
        top, bottom = weight[..., :modes, :], weight[..., modes:, :]
    else:
        u = torch.cat([u, u.flip(-1)], dim=-1)
        u = torch.cat([u, u.flip(-2)], dim=-2)
        top, bottom = weight, weight[..., 1:, :].flip(-2)
    size = u.shape[-1]
    multiplier = torch.zeros(2, 3, size, size // 2 + 1, dtype=torch.complex128)
    multiplier[..., :modes, :modes] = top
    multiplier[..., size - modes + 1 :, :modes] = bottom
    coeff = torch.einsum("bixy,ioxy->boxy", torch.fft.rfft2(u, norm="forward"), multiplier)
    expected = torch.fft.irfft2(coeff, s=(size, size), norm="forward")[..., :n, :n]
    torch.testing.assert_close(layer(u[..., :n, :n]), expected)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_fno_inference_pass_is_bit_identical_to_the_differentiable_one(
    boundary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunked in-place pass without autograd returns exactly the autograd pass's numbers,
    for every chunk size (1 sample, uneven chunks, one chunk), in no_grad and inference mode,
    and when its reused buffers change shape between calls."""
    net = FNO(2, 1, width=8, modes=6, layers=2, boundary=boundary)
    g = torch.Generator().manual_seed(0)
    for n in (24, 16, 24):
        x, t = torch.randn(5, 2, n, n, generator=g), torch.rand(5, generator=g)
        expected = net(x, t)
        assert expected.requires_grad
        one_sample = 2 * 8 * n * n * 4  # bytes of the widest activation of one sample
        for budget, size in ((1, 1), (2 * one_sample, 2), (1 << 30, 5)):
            monkeypatch.setattr(fno, "CHUNK_BYTES", budget)
            assert min(net.chunk_size(n, x.dtype), 5) == size
            with torch.no_grad():
                assert torch.equal(net(x, t), expected)
            with torch.inference_mode():
                assert torch.equal(net(x, t), expected)
        with torch.no_grad():  # buffers made in inference mode are not reused outside it
            assert torch.equal(net(x, t), expected)


@pytest.mark.parametrize(("boundary", "n"), [("periodic", 15), ("neumann", 7)])
def test_fno_refuses_grid_too_small_for_modes(boundary: str, n: int) -> None:
    net = FNO(1, 1, width=4, modes=8, layers=1, boundary=boundary)
    with pytest.raises(MldiffError, match=rf"n={n}.*modes=8"):
        net(torch.randn(1, 1, n, n), torch.rand(1))


def test_unet_works_at_its_resolution_and_refuses_others() -> None:
    net = UNet(2, 1, resolution=16, width=8, depth=3, boundary="neumann")
    assert net(torch.randn(2, 2, 16, 16), torch.rand(2)).shape == (2, 1, 16, 16)
    for n in (8, 32):
        with pytest.raises(MldiffError, match=rf"resolution 16, got n={n}"):
            net(torch.randn(2, 2, n, n), torch.rand(2))
    with pytest.raises(MldiffError, match="resolution: expected a multiple of 2"):
        UNet(1, 1, resolution=18, depth=3)


@pytest.mark.parametrize("name", ["fno", "unet"])
def test_time_conditioning_changes_output(name: str) -> None:
    hyper = {"resolution": 16} if name == "unet" else {"modes": 4}
    net = build_model(name, 1, 1, width=8, **hyper)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    early, late = net(x, torch.full((3,), 0.05)), net(x, torch.full((3,), 0.95))
    assert (early - late).abs().max() > 1e-3 * early.abs().max()


@pytest.mark.parametrize("name", ["fno", "unet"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_every_parameter_receives_a_gradient(name: str, boundary: str) -> None:
    hyper = {"resolution": 16} if name == "unet" else {"modes": 4}
    net = build_model(name, 2, 1, width=8, boundary=boundary, **hyper)
    net(torch.randn(3, 2, 16, 16), torch.rand(3)).square().mean().backward()
    for key, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, key


def test_build_model_rejects_unknown_names_and_hyperparameters() -> None:
    with pytest.raises(MldiffError, match=r"unknown name 'resnet'.*\['fno', 'unet'\]"):
        build_model("resnet", 1, 1)
    with pytest.raises(MldiffError, match=r"fno: unknown hyperparameter 'depth'.*'modes'"):
        build_model("fno", 1, 1, depth=3)
    with pytest.raises(MldiffError, match="unet: missing hyperparameter 'resolution'"):
        build_model("unet", 1, 1)
    with pytest.raises(MldiffError, match="boundary: expected one of"):
        build_model("fno", 1, 1, boundary="dirichlet")
    with pytest.raises(MldiffError, match="modes: expected a positive integer, got 0"):
        build_model("fno", 1, 1, modes=0)


def test_models_check_input_shapes() -> None:
    net = build_model("fno", 2, 1, width=4, modes=2)
    with pytest.raises(MldiffError, match=r"x: expected shape \(B, 2, n, n\)"):
        net(torch.randn(1, 1, 8, 8), torch.rand(1))
    with pytest.raises(MldiffError, match=r"t: expected shape \(3,\)"):
        net(torch.randn(3, 2, 8, 8), torch.rand(1))


@pytest.mark.parametrize("name", ["fno", "unet"])
def test_weights_are_determined_by_seed_alone(name: str) -> None:
    hyper = {"resolution": 16} if name == "unet" else {"modes": 4}
    state = torch.get_rng_state()
    first, again = (build_model(name, 1, 1, width=8, seed=7, **hyper) for _ in range(2))
    other = build_model(name, 1, 1, width=8, seed=8, **hyper)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    pairs = zip(first.parameters(), other.parameters(), strict=True)
    assert not all(torch.equal(a, c) for a, c in pairs)
    x, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    assert torch.equal(first(x, t), again(x, t))


def test_count_parameters_and_flops_of_a_tiny_fno() -> None:
    net = FNO(1, 1, width=4, modes=2, layers=1, time_dim=4)
    spectral = 4 * 4 * 3 * 2 * 2  # in · out · (2·modes − 1) · modes · (re, im)
    pointwise = (5 * 4 + 4) + (4 * 4 + 4) + (4 * 8 + 8) + (8 * 1 + 1)  # lift, skip, projection
    dense = (4 * 4 + 4) * 2 + (4 * 8 + 8)  # time MLP, FiLM
    assert count_parameters(net) == spectral + pointwise + dense
    n = 16
    size = n * n
    expected = (
        2 * (5 * 4 + 4 * 4 + 4 * 8 + 8 * 1) * size  # pointwise layers
        + 2 * (4 * 4 * 2 + 4 * 8)  # time MLP and FiLM, once per sample
        + int(5 * size * math.log2(size) * (4 + 4))
        + 4 * spectral  # FFTs, complex multiply
    )
    assert estimate_flops(net, n) == expected


def test_tiny_fno_learns_a_spectral_filter() -> None:
    """The heat semigroup ``e^{0.05 Δ}`` (a fixed spectral filter, negligible beyond the
    kept modes) on white-noise inputs, learned to ~2.5% relative error in 200 Adam steps."""
    n, g = 16, torch.Generator().manual_seed(0)
    gain = torch.exp(-0.05 * wavenumber_squared(n, 2.0, "periodic")).float()

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(size, 1, n, n, generator=g)
        return x, inverse(forward(x, "periodic") * gain, "periodic", n)

    net = FNO(1, 1, width=8, modes=4, layers=1, time_dim=8)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        x, y = batch(16)
        loss = (net(x, torch.rand(16, generator=g)) - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = batch(64)
    with torch.no_grad():
        error = (net(x, torch.rand(64, generator=g)) - y).norm() / y.norm()
    assert error < 0.05
