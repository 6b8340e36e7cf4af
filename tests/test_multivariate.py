"""Multivariate diffusions with auxiliary variables: transitions, K = 1 = VP, samplers, errors."""

import math

import pytest
import torch

from mldiff import spectral
from mldiff.config import ProcessParams
from mldiff.diffusion import (
    VPSDE,
    GaussianScore,
    JointGaussianScore,
    LearnedProcess,
    LinearProcess,
    as_linear,
    build_prior,
    build_process,
    sample_em,
    sample_ode,
)
from mldiff.errors import MldiffError
from mldiff.models import build_model
from mldiff.train import build_components

NAMED = ("cld", "alda", "malda", "learned")
BOUNDARIES = ("periodic", "neumann")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _eye(k: int) -> torch.Tensor:
    return torch.eye(k, dtype=torch.float64)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_k1_process_reproduces_the_vp_sde(boundary):
    prior = build_prior("matern", gamma=1.5)
    vp = VPSDE(prior, boundary, beta_max=15.0, t_min=2e-3)
    linear = as_linear(vp)
    t = torch.tensor([2e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    law, (alpha, sigma) = linear.transition(t), vp.alpha_sigma(t)
    torch.testing.assert_close(law.mean[:, 0], alpha, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(law.chol[:, 0, 0], sigma, rtol=1e-12, atol=0)
    x0 = prior.sample((4, 2), 16, boundary, _gen(1))
    t32 = t.float()
    for a, b in zip(vp.perturb(x0, t32, _gen(2)), linear.perturb(x0, t32, _gen(2)), strict=True):
        torch.testing.assert_close(a, b)  # same draws, same α x0 + σ η and target η
    net = GaussianScore(vp, build_prior("matern", gamma=2.0, scale=3.0))
    torch.testing.assert_close(vp.loss(net, x0, t32, _gen(3)), linear.loss(net, x0, t32, _gen(3)))
    y, out = x0.double(), net(x0.double(), t)
    torch.testing.assert_close(vp.drift(y, t), linear.drift(y, t))
    torch.testing.assert_close(vp.diffusion_apply(y, t), linear.diffusion_apply(y, t))
    torch.testing.assert_close(
        vp.preconditioned_score(y, t, out), linear.preconditioned_score(y, t, out)
    )
    torch.testing.assert_close(vp.prior_sample(3, 2, 8, _gen(4)), linear.prior_sample(3, 2, 8,
                                                                                       _gen(4)))
    joint = JointGaussianScore(vp, build_prior("matern", gamma=2.0, scale=3.0))
    torch.testing.assert_close(joint(y, t), out)
    assert linear.state_channels(2) == 2 and torch.equal(linear.output(y), y)


def test_named_processes_have_the_papers_matrices():
    prior = build_prior("matern")
    q, d = build_process("cld", prior, "periodic", gamma=1.5).matrices()
    assert q.tolist() == [[0, -1], [1, 0]] and d.tolist() == [[0, 0], [0, 1.5]]
    q, d = build_process("malda", prior, "periodic").matrices()
    assert q.tolist() == [[0, -1, -1], [1, 0, -1], [1, 1, 0]]
    assert d.diagonal().tolist() == [0, 2, 2]
    # ALDA's defaults: every eigenvalue of A = −(Q + D) has real part −1 (−1, −1 ± i√2).
    q, d = build_process("alda", prior, "periodic").matrices()
    assert d.diagonal().tolist() == [0, 0, 3]
    eig = torch.linalg.eigvals(-(q + d))
    torch.testing.assert_close(eig.real, torch.full((3,), -1.0, dtype=torch.float64), atol=1e-4,
                               rtol=0)
    # Components the reverse dynamics use: ε_j for j ≥ the first index with D_jj > 0.
    active = {name: build_process(name, prior, "periodic").active.tolist() for name in NAMED}
    assert active == {"cld": [False, True], "alda": [False, False, True],
                      "malda": [False, True, True], "learned": [True, True]}
    assert build_process("malda", prior, "periodic", K=4).K == 4


@pytest.mark.parametrize("name", NAMED)
def test_transition_tends_to_the_stationary_law(name):
    # B(1) = 60: M = exp(B A) → 0 and Σ → Σ∞ = I_K, whatever the start.
    process = build_process(name, build_prior("matern"), "neumann", beta_max=120.0)
    law = process.transition(torch.tensor([1.0]))
    k = process.K
    torch.testing.assert_close(law.cov[0], _eye(k), atol=1e-9, rtol=0)
    assert float(law.mean.detach().abs().max()) < 1e-9


@pytest.mark.parametrize("name", NAMED)
def test_transition_solves_the_moment_equations(name):
    # Σ − I = M (Σ0 − I) Mᵀ (Lyapunov, Σ∞ = I) at moderate times. At t_min every entry, even
    # the tiny x–x variance, matches the Taylor series of dΣ/dB = AΣ + ΣAᵀ + 2D to 1e-9.
    process = build_process(name, build_prior("matern"), "neumann")
    q, d = (m.detach() for m in process.matrices())
    a, k = -(q + d), process.K
    sigma0 = torch.diag(torch.tensor([0.0] + [process.v0_scale**2] * (k - 1), dtype=torch.float64))
    t = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)
    law = process.transition(t)
    m = torch.linalg.matrix_exp(process.integrated_beta(t)[:, None, None] * a)
    torch.testing.assert_close(law.mean.detach(), m[..., 0], rtol=1e-10, atol=1e-13)
    expected = _eye(k) + m @ (sigma0 - _eye(k)) @ m.mT
    torch.testing.assert_close(law.cov.detach(), expected, rtol=0, atol=1e-12)
    t_min = torch.tensor([process.t_min], dtype=torch.float64)
    b = float(process.integrated_beta(t_min))
    term = a @ sigma0 + sigma0 @ a.T + 2 * d
    series = sigma0 + b * term
    for order in range(2, 8):
        term = a @ term + term @ a.T
        series = series + b**order / math.factorial(order) * term
    cov = process.transition(t_min).cov[0].detach()
    torch.testing.assert_close(cov, series, rtol=1e-9, atol=1e-300)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


@pytest.mark.parametrize("name", NAMED)
def test_transition_matches_euler_maruyama_of_the_forward_sde(name):
    # Simulate dy = βAy ds + √(2β)(√D ⊗ C^½) dW from [x0, v0 ~ N(0, σ_v0² C)] and compare with
    # M e₁ ⊗ x0 and the whitened per-mode covariance Σ(s) (the same for every mode).
    prior, boundary, n, draws, steps = build_prior("matern", gamma=1.5), "neumann", 8, 256, 500
    process = build_process(name, prior, boundary, beta_max=10.0)
    centres = spectral.cell_centres(n)
    x0 = (1 + torch.cos(math.pi * centres)[:, None] * torch.sin(math.pi * centres)).double()
    gen, h = _gen(1), 1.0 / steps
    y = process.initial_state(x0.expand(draws, 1, n, n), gen)
    lam = prior.eigenvalues(n, boundary)
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((draws,), i * h, dtype=torch.float64)
            z = torch.randn(y.shape, generator=gen, dtype=torch.float64)
            y = y + h * process.drift(y, t) + math.sqrt(h) * process.diffusion_apply(z, t)
            if i + 1 not in (steps // 10, steps // 2):
                continue
            law = process.transition(torch.tensor([(i + 1) * h]))
            cov, mean = law.cov[0], law.mean[0, :, None, None] * x0
            spread = math.sqrt(prior.trace(n, boundary) / draws)
            assert float((y.mean(0) - mean).abs().max()) < 5 * spread
            coef = spectral.forward(y - y.mean(0), boundary) / (n * lam.sqrt())
            pooled = torch.einsum("bimn,bjmn->ij", coef, coef) / (draws * n * n)
            torch.testing.assert_close(pooled, cov, atol=0.04, rtol=0)
            per_mode = coef.square().mean(0) / cov.diagonal()[:, None, None]
            assert float((per_mode - 1).square().mean().sqrt()) < 3 * math.sqrt(2 / draws)


@pytest.mark.parametrize(
    ("name", "sampler", "steps"),
    [("cld", sample_em, 200), ("cld", sample_ode, 100), ("malda", sample_em, 200),
     pytest.param("malda", sample_ode, 200, marks=pytest.mark.slow)],
)
def test_sampler_with_exact_score_reproduces_data_covariance(name, sampler, steps):
    process = build_process(name, build_prior("matern"), "periodic")
    data, mean = build_prior("matern", gamma=2.0, tau=5.0, scale=20.0), 0.3
    exact = JointGaussianScore(process, data, mean=mean)
    n, draws = 8, 1000
    x = sampler(process, exact, draws, 1, n, steps, _gen(1), progress=False)
    assert x.shape == (draws, 1, n, n) and x.dtype == torch.float32
    coef = spectral.forward(x.double() - mean, "periodic") / n
    ratio = coef.abs().square().mean(0)[0] / data.eigenvalues(n, "periodic")
    # one mode's variance has sd ≈ √(2/1000) ≈ 4.5 %; pooled over ~32 free modes ≈ 0.8 %
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.04)
    assert float((ratio - 1).square().mean().sqrt()) < 0.07
    spread = float(data.eigenvalues(n, "periodic")[0, 0] / draws) ** 0.5
    assert float(x.mean()) == pytest.approx(mean, abs=4 * spread)


def test_exact_joint_score_is_the_posterior_mean_of_the_noise():
    # ε* = E[η | y]: the residual η − ε* is orthogonal to every function of y, ε* included;
    # a score built for the wrong data covariance is not.
    prior, data = build_prior("matern"), build_prior("matern", gamma=2.0, scale=5.0)
    process = build_process("malda", prior, "neumann")
    x0 = data.sample((2000, 1), 8, "neumann", _gen(2), torch.float64)
    t = torch.full((2000,), 0.2, dtype=torch.float64)
    y, eta = process.perturb(x0, t, _gen(3))
    for covariance, orthogonal in ((data, True), (build_prior("matern", gamma=2.0), False)):
        eps = JointGaussianScore(process, covariance)(y, t)
        cross = ((eta - eps) * eps).flatten(1).sum(1)
        significant = abs(float(cross.mean())) > 4 * float(cross.std()) / math.sqrt(2000)
        assert significant != orthogonal


def test_fixed_process_loss_ignores_the_unused_noise_components():
    prior = build_prior("matern")
    process = build_process("cld", prior, "neumann")
    x0 = prior.sample((6, 2), 8, "neumann", _gen(5))
    t = torch.linspace(0.01, 0.9, 6)

    def net(y, s):
        return torch.cat([y[:, :2] * 0 + 100.0, y[:, 2:] * 0.5], 1)

    def other(y, s):
        return torch.cat([y[:, :2] * 0 - 7.0, y[:, 2:] * 0.5], 1)

    base = process.loss(net, x0, t, _gen(6))
    torch.testing.assert_close(base, process.loss(other, x0, t, _gen(6)))
    y, eta = process.perturb(x0, t, _gen(6))
    expected = (0.5 * y[:, 2:] - eta[:, 2:]).square().flatten(1).mean(1)
    torch.testing.assert_close(base, expected)
    torch.testing.assert_close(base[2:4], process.loss(net, x0, t, _gen(6), slice(2, 4)))


def test_initial_state_output_and_prior_shapes():
    prior = build_prior("matern")
    process = build_process("alda", prior, "periodic", v0_scale=0.2)
    x0 = prior.sample((500, 2), 8, "periodic", _gen(7), torch.float64)
    y0 = process.initial_state(x0, _gen(8))
    assert y0.shape == (500, 6, 8, 8) and process.state_channels(2) == 6
    assert torch.equal(process.output(y0), x0)
    # v0 ~ N(0, σ_v0² C): pointwise variance σ_v0² tr C
    assert float(y0[:, 2:].var()) == pytest.approx(0.04 * prior.trace(8, "periodic"), rel=0.05)
    assert process.prior_sample(3, 2, 16, _gen(9)).shape == (3, 6, 16, 16)


def test_learned_process_is_a_trainable_module():
    prior = build_prior("matern")
    process = build_process("learned", prior, "neumann", K=3, d_full=True, seed=4)
    assert isinstance(process, torch.nn.Module) and process.K == 3
    q, d = process.matrices()
    torch.testing.assert_close(q, -q.T)
    torch.testing.assert_close(d, 0.5 * _eye(3))
    net = build_model("fno", 3, 3, width=8, modes=4, layers=1, time_dim=8, boundary="neumann")
    x0 = prior.sample((4, 1), 8, "neumann", _gen(1))
    t = process.sample_time(4, _gen(2))
    assert float(t.min()) >= process.t_min and float(t.max()) <= 1.0
    process.loss(net, x0, t, _gen(3)).mean().backward()
    assert process.skew.grad.abs().sum() > 0 and process.dissipation.grad.abs().sum() > 0
    assert next(net.parameters()).grad is not None
    clone = build_process("learned", prior, "neumann", K=3, d_full=True, seed=5)
    clone.load_state_dict(process.state_dict())
    torch.testing.assert_close(clone.matrices()[0], q)
    times = process.stratified_times(8)
    assert times.shape == (8,) and bool((times.diff() > 0).all())
    uniform = build_process("cld", prior, "neumann").stratified_times(4)
    torch.testing.assert_close(uniform, 1e-3 + 0.999 * torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_config_and_components_carry_k_channels():
    ProcessParams(process="cld", options={"gamma": 2.0, "v0_scale": 0.1})
    spec = {
        "network": {"arch": "fno", "params": {"width": 8, "modes": 4, "layers": 1,
                                              "time_dim": 8}},
        "prior": {"name": "matern", "params": {}},
        "process": ProcessParams(process="learned", options={"K": 3}).model_dump(mode="json"),
    }
    level = {"boundary": "neumann", "origin": -1.0, "length": 2.0, "channels": 2,
             "resolution": 8}
    net, process = build_components(spec, level)
    assert isinstance(process, LearnedProcess) and net.in_channels == 6
    with pytest.raises(MldiffError, match="q: expected a skew-symmetric"):
        ProcessParams(process="linear", options={"q": [[0, 1], [1, 0]], "d": [[1, 0], [0, 1]]})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: LinearProcess(p, "periodic", q=[[0, 1], [1, 0]], d=[[0, 0], [0, 1]]),
         "q: expected a skew-symmetric"),
        (lambda p: LinearProcess(p, "periodic", q=[[0, -1], [1, 0]], d=[[1, 0], [0, -1]]),
         "d: expected a positive semidefinite"),
        (lambda p: LinearProcess(p, "periodic", q=[[0, -1], [1, 0]], d=[[1, 2], [0, 1]]),
         "d: expected a symmetric"),
        (lambda p: LinearProcess(p, "periodic", q=[[0.0]], d=[[1, 0], [0, 1]]), "q, d: expected"),
        (lambda p: LinearProcess(p, "periodic", q=[[0, 0], [0, 0]], d=[[0, 0], [0, 1]]),
         "never reaches"),
        (lambda p: LinearProcess(p, "periodic", q="abc", d=[[1]]), "q: expected a square"),
        (lambda p: LinearProcess(p, "periodic", d=[[1]]), "q: expected a square"),
        (lambda p: build_process("cld", p, "periodic", v0_scale=0.0), "v0_scale: expected"),
        (lambda p: build_process("cld", p, "periodic", gamma=-2), "gamma: expected"),
        (lambda p: build_process("cld", p, "periodic", K=3), "unknown parameter"),
        (lambda p: build_process("malda", p, "periodic", K=1), "K: expected"),
        (lambda p: build_process("learned", p, "periodic", K=2.5), "K: expected"),
        (lambda p: build_process("learned", p, "periodic", d_full="yes"), "d_full: expected"),
        (lambda p: build_process("cld", p, "periodic").transition(torch.zeros(1)),
         "t: transition covariance"),
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(MldiffError, match=message) as info:
        call(build_prior("matern"))
    assert "\n" not in str(info.value)


def test_network_with_the_wrong_number_of_state_channels_raises():
    # e.g. a VP model file (in_channels = C) used with a K = 2 process
    prior = build_prior("matern")
    net = build_model("fno", 1, 1, width=8, modes=4, layers=1, time_dim=8, boundary="neumann")
    x0 = prior.sample((2, 1), 8, "neumann", _gen(1))
    for name in ("cld", "learned"):
        process = build_process(name, prior, "neumann")
        with pytest.raises(MldiffError, match=r"network: has 1 input channels.*= 2"):
            process.loss(net, x0, torch.full((2,), 0.5), _gen(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loss_and_sampling_stay_on_device():
    prior = build_prior("matern")
    gen = torch.Generator("cuda").manual_seed(0)
    x0 = prior.sample((4, 1), 16, "neumann", gen)
    for name in NAMED:
        process = build_process(name, prior, "neumann")
        if isinstance(process, torch.nn.Module):
            process.cuda()
        exact = JointGaussianScore(process, build_prior("matern", gamma=2.0)).cuda()
        assert process.loss(exact, x0, process.sample_time(4, gen), gen).is_cuda
        x = sample_em(process, exact, 2, 1, 16, 10, gen, progress=False)
        assert x.is_cuda and x.shape == (2, 1, 16, 16)
