"""Dimensionality-varying diffusion: operators, marginals, exact score, sampling, cost, config."""

import math

import pytest
import torch

from mldiff import config, spectral
from mldiff.datasets import prolong, restrict
from mldiff.diffusion import (
    VPSDE,
    DimVaryingGaussianScore,
    DimVaryingVP,
    GaussianScore,
    StageNetworks,
    build_prior,
    build_process,
    sample_em,
    sample_ode,
    switch_times_from_data,
)
from mldiff.errors import MldiffError
from mldiff.models import build_model
from mldiff.sample import CountingNet

BOUNDARIES = ("periodic", "neumann")
MEAN = 0.3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _prior():
    return build_prior("matern", gamma=1.5)


def _data():
    return build_prior("matern", gamma=2.0, tau=5.0, scale=20.0)


def _process(boundary, **options):
    options = {"factors": [2, 4], "switch_times": [0.4, 0.6], **options}
    return build_process("dimvarying", _prior(), boundary, **options)


def _matrix(op, n):
    """The matrix of a linear map of ``(n, n)`` fields (columns = images of basis vectors)."""
    basis = torch.eye(n * n, dtype=torch.float64).reshape(n * n, n, n)
    return op(basis).reshape(n * n, -1).T


def _attenuation(t, start, end, residual):
    """``a(t) = exp(ln(residual) (1 − cos πu) / 2)``, written out independently of the module."""
    u = min(max((t - start) / (end - start), 0.0), 1.0)
    return math.exp(math.log(residual) * 0.5 * (1 - math.cos(math.pi * u)))


def _band_ratio(x, boundary, data, lo, hi):
    """Sample variance / data variance pooled over the modes a grid of size in ``[lo, hi)``
    adds, and the standard deviation of that estimate, ``√(2 / (draws · modes))``."""
    n = x.shape[-1]
    coef = spectral.forward(x.double() - MEAN, boundary) / n
    ratio = coef.abs().square().mean(0)[0] / data.eigenvalues(n, boundary)
    my, mx = spectral.mode_indices(n, boundary)
    level = torch.maximum(my.abs(), mx.abs()) * (2 if boundary == "periodic" else 1)
    band = (level >= lo) & (level < hi)
    return float(ratio[band].mean()), math.sqrt(2 / (len(x) * int(band.sum())))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("prior_name", "method"), [("matern", "spectral"), ("white", "average")])
def test_restriction_is_orthonormal_and_keeps_q_noise(boundary, prior_name, method):
    prior = build_prior(prior_name) if prior_name == "white" else _prior()
    process = build_process(
        "dimvarying", prior, boundary, factors=[2], switch_times=[0.5], method=method
    )
    n, m = 8, 4
    r = _matrix(lambda y: restrict(y, 2, method, boundary, orthonormal=True), n)
    pi = _matrix(lambda y: process.project(y, 0), n)
    eye = torch.eye(m * m, dtype=torch.float64)
    torch.testing.assert_close(r @ r.T, eye, atol=1e-12, rtol=0)  # R Rᵀ = I
    torch.testing.assert_close(pi, r.T @ r, atol=1e-12, rtol=0)  # Π = U R, U = Rᵀ
    torch.testing.assert_close(pi @ pi, pi, atol=1e-12, rtol=0)
    torch.testing.assert_close(pi, pi.T, atol=1e-12, rtol=0)
    q = _matrix(lambda y: prior.apply(y, 1.0, boundary), n)
    torch.testing.assert_close(q @ pi, pi @ q, atol=1e-12, rtol=0)
    # The value-preserving restriction P maps the law of fine Q-noise n Q^{1/2} w onto that of
    # coarse Q-noise m Q^{1/2} w (periodic Nyquist included): P S Sᵀ Pᵀ = S_m S_mᵀ.
    p = _matrix(lambda y: restrict(y, 2, method, boundary), n)
    s = _matrix(lambda w: n * prior.apply(w, 0.5, boundary), n)
    s_m = _matrix(lambda w: m * prior.apply(w, 0.5, boundary), m)
    torch.testing.assert_close(p @ s @ s.T @ p.T, s_m @ s_m.T, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_perturb_is_the_stated_marginal_in_every_stage(boundary):
    # x_t − σ η = α A_j(t) P_j x0 exactly, with η (the target) a Q-noise draw on grid n / F_j.
    process, n = _process(boundary, residual=0.05), 16
    x0 = MEAN + _data().sample((3, 2), n, boundary, _gen(1), torch.float64)
    edges = (0.0, 0.4, 0.6, 1.0)
    for t_value, j in ((0.1, 0), (0.3, 0), (0.45, 1), (0.59, 1), (0.6, 2), (0.9, 2)):
        t = torch.full((3,), t_value, dtype=torch.float64)
        x_t, eta = process.perturb(x0, t, _gen(2))
        grid = n // process.factors[j]
        assert x_t.shape == eta.shape == (3, 2, grid, grid) and process.stage(t) == j
        y0 = restrict(x0, process.factors[j], "spectral", boundary)
        if j < 2:
            a = _attenuation(t_value, edges[j], edges[j + 1], 0.05)
            y0 = y0 - (1 - a) * (y0 - prolong(restrict(y0, 2, "spectral", boundary), 2,
                                              "spectral", boundary))
        alpha, sigma = (float(v) for v in process.alpha_sigma(t[0]))
        torch.testing.assert_close(x_t - sigma * eta, alpha * y0, atol=1e-12, rtol=1e-12)
        reference = _prior().sample((3, 2), grid, boundary, _gen(2), torch.float64)
        torch.testing.assert_close(eta, reference, atol=0, rtol=0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_forward_sde_simulation_matches_the_marginal_across_a_switch(boundary):
    # Euler–Maruyama of dX = [−½βX − ρ(I−Π)X] dt + Q^{1/2} D dW from a fixed x0, restricted at
    # the switch τ = 0.5: mean α A(t) x0 and per-mode variance σ² λ on both grids.
    process = build_process(
        "dimvarying", _prior(), boundary, factors=[2], switch_times=[0.5], residual=0.01
    )
    n, draws, h = 16, 256, 1.0 / 400
    centres = spectral.cell_centres(n)
    field = 1.5 + torch.cos(math.pi * centres)[:, None] * torch.sin(math.pi * centres)
    field = field + 0.5 * torch.cos(6 * math.pi * centres)[None, :]  # in the dropped band
    x, gen = field.expand(draws, 1, n, n).clone(), _gen(3)
    for i in range(300):
        t_value = i * h
        if t_value == 0.5:
            x = restrict(x, 2, "spectral", boundary)
        t = torch.full((draws,), t_value, dtype=torch.float64)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = x + h * process.drift(x, t) + math.sqrt(h) * process.diffusion_apply(z, t)
        if i + 1 in (100, 199, 300):
            t_end = (i + 1) * h
            alpha, sigma = (float(v) for v in process.alpha_sigma(torch.tensor(t_end)))
            grid = x.shape[-1]
            y0 = restrict(field, n // grid, "spectral", boundary)
            if grid == n:
                a = _attenuation(t_end, 0.0, 0.5, 0.01)
                kept = prolong(restrict(y0, 2, "spectral", boundary), 2, "spectral", boundary)
                y0 = kept + a * (y0 - kept)
            spread = sigma * math.sqrt(_prior().trace(grid, boundary) / draws)
            assert float((x.mean(0)[0] - alpha * y0).abs().max()) < 5 * spread
            coef = spectral.forward(x - x.mean(0), boundary) / grid
            lam = _prior().eigenvalues(grid, boundary)
            ratio = coef.abs().square().mean(0)[0] / (sigma**2 * lam)
            assert float(ratio.mean()) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_exact_score_is_the_conditional_mean_of_the_noise(boundary):
    # E[⟨η − ε*(x_t), g(x_t)⟩] = 0 for g = Π x̃ and (I − Π) x̃ (x̃ = x_t − α m), inside the
    # attenuation window where the complement's signal is partly gone; the VP score, which
    # ignores the attenuation, fails on the complement.
    process, data, n, draws = _process(boundary), _data(), 16, 2000
    exact = DimVaryingGaussianScore(process, data, mean=MEAN)
    ignoring = GaussianScore(VPSDE(_prior(), boundary), data, mean=MEAN)
    gen = _gen(4)
    for t_value in (0.15, 0.25, 0.5):
        t = torch.full((draws,), t_value, dtype=torch.float64)
        j = process.stage(t)
        x0 = MEAN + data.sample((draws, 1), n, boundary, gen, torch.float64)
        x_t, eta = process.perturb(x0, t, gen)
        centred = x_t - float(process.alpha_sigma(t[0])[0]) * MEAN
        kept = process.project(centred, j)
        for score, works in ((exact, True), (ignoring, False)):
            residual = eta - score(x_t, t)
            for g, on_complement in ((kept, False), (centred - kept, True)):
                inner = (residual * g).flatten(1).mean(1)
                z = float(inner.mean()) / (float(inner.std()) / math.sqrt(draws))
                assert abs(z) < 4 if works or not on_complement else abs(z) > 10


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("sampler", "steps", "n"), [(sample_em, 200, 16), (sample_ode, 40, 16), (sample_ode, 40, 32)]
)
def test_sampler_with_exact_score_reproduces_data_covariance_across_switches(
    sampler, steps, n, boundary
):
    # The first steps run on n/4, then n/2, then n; each band is the one a switch drops.
    process, data, draws = _process(boundary), _data(), 1000
    exact = DimVaryingGaussianScore(process, data, mean=MEAN)
    x = sampler(process, exact, draws, 1, n, steps, _gen(5), progress=False)
    assert x.shape == (draws, 1, n, n) and x.dtype == torch.float32
    for lo, hi in ((0, n // 4), (n // 4, n // 2), (n // 2, n)):
        ratio, sd = _band_ratio(x, boundary, data, lo, hi)  # sd ≤ 2 %, 0.7 % above n/4
        assert ratio == pytest.approx(1.0, abs=0.02 + 3 * sd)
    spread = float(data.eigenvalues(n, boundary)[0, 0] / draws) ** 0.5
    assert float(x.mean()) == pytest.approx(MEAN, abs=4 * spread)


def test_hard_switch_without_attenuation_loses_the_dropped_band():
    # residual = 1 drops signal still above the noise at τ; the attenuation keeps it.
    data, n = _data(), 16
    ratios = {}
    for residual in (1.0, 0.01):
        process = _process("neumann", residual=residual)
        exact = DimVaryingGaussianScore(process, data, mean=MEAN)
        x = sample_ode(process, exact, 1000, 1, n, 40, _gen(6), progress=False)
        ratios[residual] = _band_ratio(x, "neumann", data, 8, 16)[0]  # sd 0.3 %
    assert ratios[1.0] < 0.9 and ratios[0.01] == pytest.approx(1.0, abs=0.02)


def test_sampling_cost_at_64_is_lower_than_vp():
    # Switches to 32×32 and 16×16: the network sees Σ_steps batch · n_t² points.
    process, data, batch, steps = _process("periodic"), _data(), 2, 20
    vp = VPSDE(_prior(), "periodic")
    runs = {}
    for name, proc, score in (
        ("vp", vp, GaussianScore(vp, data, mean=MEAN)),
        ("dimvarying", process, DimVaryingGaussianScore(process, data, mean=MEAN)),
    ):
        counted = CountingNet(score)
        x = sample_em(proc, counted, batch, 1, 64, steps, _gen(7), progress=False)
        assert x.shape == (batch, 1, 64, 64)
        runs[name] = counted
    times = process.time_grid(steps)[1:].tolist()
    expected = sum(batch * process.grid_size(t, 64) ** 2 for t in times)
    assert runs["dimvarying"].points == expected and runs["dimvarying"].calls == steps
    assert runs["vp"].points == steps * batch * 64**2
    assert runs["dimvarying"].points < 0.5 * runs["vp"].points  # 0.4·64² + 0.2·32² + 0.4·16²


def test_time_grid_puts_switches_on_step_boundaries():
    process = _process("neumann", t_min=0.01)
    grid = process.time_grid(20)
    assert grid[0] == 1.0 and grid[-1] == 0.01 and len(grid) == 21
    assert bool((grid[1:] < grid[:-1]).all())
    for tau in (0.4, 0.6):
        assert tau in grid.tolist()
    stages = [process.stage(t) for t in grid[1:].tolist()]
    assert [stages.count(j) for j in (2, 1, 0)] == [8, 4, 8]  # ∝ lengths 0.4, 0.2, 0.39
    assert len(process.time_grid(3)) == 4  # one step per stage at least
    with pytest.raises(MldiffError, match="steps: expected at least 3"):
        process.time_grid(2)


def test_sample_time_keeps_each_batch_in_one_stage_and_is_uniform_overall():
    process, gen = _process("periodic", t_min=0.01), _gen(8)
    batches = [process.sample_time(16, gen) for _ in range(3000)]
    stages = torch.tensor([process.stage(t) for t in batches])  # raises on a mixed batch
    lengths = torch.tensor([0.39, 0.2, 0.4])
    share = torch.bincount(stages, minlength=3) / len(batches)
    torch.testing.assert_close(share, lengths / lengths.sum(), atol=0.03, rtol=0)
    t = torch.cat(batches)
    assert t.dtype == torch.float32 and float(t.min()) >= 0.01 and float(t.max()) <= 1.0
    histogram = torch.histc(t, bins=10, min=0.01, max=1.0) / len(t)
    torch.testing.assert_close(histogram, torch.full((10,), 0.1), atol=0.012, rtol=0)


def test_grid_size_and_stage_at_switch_times():
    process = _process("periodic")
    assert [process.grid_size(t, 64) for t in (0.001, 0.39, 0.4, 0.59, 0.6, 1.0)] == [
        64, 64, 32, 32, 16, 16
    ]
    # float32 copies of a switch time (0.6 → 0.59999996) belong to the later stage
    assert process.stage(torch.tensor([0.6], dtype=torch.float32)) == 2
    assert process.grid_size(0.7, 128) == 32  # any output divisible by the largest factor


def test_residual_one_in_the_first_stage_is_the_vp_process():
    process, vp = _process("neumann", residual=1.0), VPSDE(_prior(), "neumann")
    x0 = _data().sample((4, 1), 16, "neumann", _gen(9), torch.float64)
    t = torch.full((4,), 0.2, dtype=torch.float64)
    for a, b in zip(process.perturb(x0, t, _gen(10)), vp.perturb(x0, t, _gen(10)), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    z = torch.randn(4, 1, 16, 16, generator=_gen(11), dtype=torch.float64)
    torch.testing.assert_close(process.drift(z, t), vp.drift(z, t))
    torch.testing.assert_close(process.diffusion_apply(z, t), vp.diffusion_apply(z, t))
    torch.testing.assert_close(
        process.preconditioned_score(z, t, z), vp.preconditioned_score(z, t, z)
    )


def test_resize_prolongs_and_fills_the_complement_with_noise_of_size_sigma():
    process, draws = _process("periodic"), 2000
    coarse = _data().sample((draws, 1), 8, "periodic", _gen(12), torch.float64)
    fine = process.resize(coarse, 0.4, 0.39, _gen(13))
    assert fine.shape == (draws, 1, 16, 16)
    torch.testing.assert_close(restrict(fine, 2, "spectral", "periodic"), coarse)
    added = fine - prolong(coarse, 2, "spectral", "periodic")
    sigma2 = float(process.alpha_sigma(torch.tensor(0.4, dtype=torch.float64))[1]) ** 2
    expected = sigma2 * (_prior().trace(16, "periodic") - _prior().trace(8, "periodic"))
    energy = added.square().mean((-2, -1))
    assert float(energy.mean()) == pytest.approx(expected, rel=4 * float(energy.std() / (
        energy.mean() * math.sqrt(draws))))
    assert process.resize(coarse[:, :, :4, :4].contiguous(), 0.6, 0.1, _gen()).shape[-1] == 16


def test_switch_times_from_data_solve_the_band_criterion():
    # One field with one cosine in each dropped band: band energies are exact.
    prior, n, thr = _prior(), 16, 0.05
    coef = torch.zeros(1, 1, n, n, dtype=torch.float64)
    coef[..., 11, 3], coef[..., 5, 2] = 3.0, 8.0  # bands 8..16 and 4..8 (neumann modes)
    x0 = spectral.inverse(coef, "neumann", n)
    times = switch_times_from_data(x0, prior, "neumann", [2, 4], threshold=thr)
    vp = VPSDE(prior, "neumann")
    for tau, signal, (fine, coarse) in zip(times, (9.0, 64.0), ((16, 8), (8, 4)), strict=True):
        noise = prior.trace(fine, "neumann") - prior.trace(coarse, "neumann")
        alpha, sigma = vp.alpha_sigma(torch.tensor([tau, tau - 1e-3], dtype=torch.float64))
        ratio = alpha**2 * signal / n**2 / (sigma**2 * noise)
        assert float(ratio[0]) <= thr < float(ratio[1])  # the first time on the 1e-3 grid
    assert times[0] < times[1]
    with pytest.raises(MldiffError, match="factors: the band dropped at factor 2"):
        switch_times_from_data(1e6 * x0, prior, "neumann", [2, 4], threshold=thr)
    with pytest.raises(MldiffError, match="x0: expected data"):
        switch_times_from_data(x0[:, :, :6, :6], prior, "neumann", [4])


def test_shared_fno_loss_on_every_stage_and_stage_networks():
    process, gen = _process("periodic"), _gen(14)
    x0 = _data().sample((4, 1), 32, "periodic", gen)
    hyper = {"width": 8, "modes": 4, "layers": 1, "time_dim": 8, "boundary": "periodic"}
    net = build_model("fno", 1, 1, **hyper)
    for t_value in (0.2, 0.5, 0.8):  # grids 32, 16, 8
        loss = process.loss(net, x0, torch.full((4,), t_value), gen)
        assert loss.shape == (4,) and bool(torch.isfinite(loss).all())
        loss.mean().backward()
    nets = [build_model("fno", 1, 1, **{**hyper, "seed": s}) for s in range(3)]
    staged = StageNetworks(nets, process)
    assert staged.min_resolution == 8 and staged.in_channels == 1
    y = torch.randn(2, 1, 16, 16, generator=gen)
    for t_value, j in ((0.1, 0), (0.4, 1), (0.99, 2)):
        t = torch.full((2,), t_value)
        torch.testing.assert_close(staged(y, t), nets[j](y, t))
    with pytest.raises(MldiffError, match="expected 3 networks"):
        StageNetworks(nets[:2], process)


def test_config_accepts_dimvarying_options():
    params = config.ProcessParams(
        process="dimvarying",
        options={"factors": [2, 4, 8], "switch_times": [0.3, 0.5, 0.7], "method": "spectral",
                 "residual": 0.01, "network": "per_stage"},
    )
    process = build_process(params.process, _prior(), "neumann", **params.kwargs())
    assert isinstance(process, DimVaryingVP) and process.stages == 4
    assert process.network == "per_stage" and process.grid_size(0.8, 64) == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factors": [3]}, "factors: expected increasing powers of two"),
        ({"factors": [4, 2]}, "factors: expected increasing powers of two"),
        ({"factors": []}, "factors: expected increasing powers of two"),
        ({"switch_times": [0.5]}, "switch_times: expected 2 increasing times"),
        ({"switch_times": [0.6, 0.4]}, "switch_times: expected 2 increasing times"),
        ({"switch_times": [0.5, 1.0]}, "switch_times: expected 2 increasing times"),
        ({"switch_times": [0.0005, 0.5]}, "switch_times: expected 2 increasing times"),
        ({"method": "fourier"}, "method: expected one of"),
        ({"method": "average"}, "method: 'average' .* does not commute with prior 'matern'"),
        ({"residual": 0.0}, "residual: expected a finite number > 0"),
        ({"residual": 2.0}, "residual: expected a number in"),
        ({"network": "many"}, "network: expected one of"),
        ({"levels": [16, 32]}, "unknown parameter"),
    ],
)
def test_bad_options_raise(options, message):
    with pytest.raises(MldiffError, match=message):
        _process("periodic", **options)


def test_bad_calls_raise():
    process = _process("periodic")
    with pytest.raises(MldiffError, match="n: expected a grid divisible by the largest factor 4"):
        process.grid_size(0.5, 18)
    with pytest.raises(MldiffError, match="t: expected the times of one batch in one stage"):
        process.perturb(torch.zeros(2, 1, 16, 16), torch.tensor([0.3, 0.5]), _gen())
    with pytest.raises(MldiffError, match="resize: expected a reverse step"):
        process.resize(torch.zeros(1, 1, 16, 16), 0.3, 0.5, _gen())
    with pytest.raises(MldiffError, match="expected a DimVaryingVP"):
        DimVaryingGaussianScore(VPSDE(_prior(), "periodic"), _data())
    average = build_process("dimvarying", build_prior("white"), "periodic", method="average")
    with pytest.raises(MldiffError, match="method 'spectral'"):
        DimVaryingGaussianScore(average, _data())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_and_loss_run_on_device():
    process, gen = _process("neumann"), torch.Generator("cuda").manual_seed(0)
    exact = DimVaryingGaussianScore(process, _data(), mean=MEAN)
    x = sample_ode(process, exact, 8, 1, 32, 12, gen, progress=False)
    assert x.is_cuda and x.shape == (8, 1, 32, 32)
    x0 = torch.randn(4, 1, 32, 32, device="cuda", generator=gen)
    assert process.loss(exact, x0, process.sample_time(4, gen), gen).is_cuda
