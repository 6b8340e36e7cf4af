"""The prior fitted to the data: why Q must match the data, and sampling with it at any grid.

Data here are Gaussian with a known spectrum ``c_k``: a ring around shell 6 of the 16² grid
(as Gray–Scott spots: little energy in the mean and coarse modes, much in the fine ones), i.e.
rougher than Matérn γ = 1.5 draws at fine modes (c/λ ≈ 30 at shell 8) and far smoother at the
coarse ones (c/λ ≈ 0.008 at shell 1).

Root cause (measured, see README "Which prior"): the *exact* score samples such data correctly
with any of these priors, so an ill-posed score is not the cause. The optimal noise predictor is
``ε*_k = g_k(t) y_k`` with ``g_k = σ / (α² ρ_k + σ²)``, ``ρ_k = c_k / λ_k``: with Matérn Q the
network must represent a gain that varies by orders of magnitude from mode to mode and is
amplified as ``ρ^(−δ)`` by a relative error δ in the stiff coarse modes; with Q fitted to the
data (ρ ≡ 1) it is ``σ(t) · y`` on every mode, pointwise and resolution-free. A trained FNO
shows it: Matérn samples blow up, fitted ones do not.
"""

import math

import pytest
import torch

from mldiff import spectral
from mldiff.diffusion import VPSDE, Fitted, GaussianScore, build_prior, sample_em
from mldiff.errors import MldiffError
from mldiff.models import build_model
from mldiff.train import check_prior

B = "periodic"


def _ring() -> Fitted:
    """The data covariance: Gaussian ring ``3e-3 exp(−((s − 6)/3)²) + 1e-6`` in shell s."""
    knots = [math.pi * s for s in range(17)]
    values = [3e-3 * math.exp(-(((s - 6) / 3) ** 2)) + 1e-6 for s in range(17)]
    return Fitted(knots=knots, values=[values], decay=[4.0])


def _shell_ratios(samples: torch.Tensor, data, n: int) -> torch.Tensor:
    """Sample variance over data variance per shell ``round(|m|)`` inside the grid's circle."""
    power = (spectral.forward(samples.double(), B) / n).abs().square().mean((0, 1))
    ratio = power / data.eigenvalues(n, B)
    shell = (spectral.wavenumber_squared(n, 2.0, B).sqrt() / math.pi).round()
    return torch.stack([ratio[shell == s].mean() for s in range(n // 2 + 1)])


def test_a_prior_equal_to_the_data_covariance_makes_the_exact_score_pointwise():
    # ρ ≡ 1: ε*(y, t) = σ(t) y on every mode, at every grid.
    data = _ring()
    score = GaussianScore(VPSDE(data, B), data)
    t = torch.tensor([0.05, 0.5, 1.0], dtype=torch.float64)
    _, sigma = score.process.alpha_sigma(t)
    for n in (16, 64):
        y = torch.randn(3, 1, n, n, generator=torch.Generator().manual_seed(n),
                        dtype=torch.float64)
        torch.testing.assert_close(score(y, t), sigma.reshape(-1, 1, 1, 1) * y)


@pytest.mark.parametrize("prior", ["matern", "fitted"])
def test_exact_score_samples_data_rougher_than_q_without_blow_up(prior):
    data = _ring()
    draws = data.sample((400, 1), 16, B, torch.Generator().manual_seed(0), torch.float64)
    q = build_prior("matern", gamma=1.5) if prior == "matern" else Fitted.fit(draws, B)
    samples = sample_em(VPSDE(q, B), GaussianScore(VPSDE(q, B), data), 256, 1, 16, 100,
                        torch.Generator().manual_seed(1), progress=False, dtype=torch.float64)
    ratios = _shell_ratios(samples, data, 16)[1:]  # shell 0 (c = 1e-6) is stiff under Matérn
    assert float(ratios.min()) > 0.8 and float(ratios.max()) < 1.25


def test_exact_score_with_the_fitted_prior_reproduces_per_mode_variances_at_1x_2x_4x():
    # Data Matérn(γ = 1.3, τ = 3) known on every grid; Q fitted at 16² only.
    data = build_prior("matern", gamma=1.3, tau=3.0)
    draws = data.sample((400, 1), 16, B, torch.Generator().manual_seed(0), torch.float64)
    process = VPSDE(Fitted.fit(draws, B), B)
    score = GaussianScore(process, data)
    for n in (16, 32, 64):
        samples = sample_em(process, score, 256, 1, n, 100, torch.Generator().manual_seed(n),
                            progress=False, dtype=torch.float64)
        ratios = _shell_ratios(samples, data, n)
        assert float(ratios.min()) > 0.8 and float(ratios.max()) < 1.25, (n, ratios)
        assert float(ratios.mean()) == pytest.approx(1.0, abs=0.05)


def _train(process: VPSDE, x: torch.Tensor, steps: int, arch: str = "fno") -> torch.nn.Module:
    """A small FNO (or UNet at the grid of ``x``) trained on ``x`` by denoising score matching
    (AdamW, EMA 0.99)."""
    torch.manual_seed(0)
    kw = {"width": 16, "modes": 6, "layers": 3} if arch == "fno" else {
        "width": 8, "depth": 2, "resolution": x.shape[-1]}
    net, ema = (build_model(arch, 1, 1, boundary=process.boundary, **kw) for _ in range(2))
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = x[torch.randperm(len(x), generator=g)[:16]]
        loss = process.loss(net, batch, process.sample_time(16, g), g).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters(), strict=True):
                e.lerp_(p, 0.01)
    return ema.eval()


@pytest.mark.slow
def test_trained_fno_blows_up_with_matern_q_and_not_with_the_fitted_prior():
    # Root cause: the same network, data and budget; only Q differs. Measured (600 steps):
    # Matérn variance 116x the data at 16², fitted 1.05x. (At 32², above the trained band, the
    # fitted prior's samples still carry 2-4x the variance: not asserted, see README.)
    data = _ring()
    x = data.sample((512, 1), 16, B, torch.Generator().manual_seed(0), torch.float32)
    x = x / x.std()
    ratios = {}
    for name, q in (("matern", build_prior("matern", gamma=1.5)), ("fitted", Fitted.fit(x, B))):
        process = VPSDE(q, B)
        net = _train(process, x, 400)
        s = sample_em(process, net, 64, 1, 16, 50, torch.Generator().manual_seed(2),
                      progress=False)
        ratios[name] = float(s.var() / x.var())
    assert ratios["matern"] > 10, ratios
    assert 0.5 < ratios["fitted"] < 2, ratios


def _geometry(boundary: str = B) -> dict:
    return {"boundary": boundary, "length": 2.0, "species": ["A", "B"]}


def test_prior_data_check_stops_on_data_rougher_than_the_forward_process_noises(caplog):
    # Data with a flat spectrum against Q = Matérn γ = 3: at the finest shells c/λ ≈ 1e6 >
    # 1/α(1)² ≈ 2.3e4, the forward process never noises them.
    x = build_prior("white", scale=1 / 256).sample((64, 2), 16, B, torch.Generator(),
                                                    torch.float64)
    process = VPSDE(build_prior("matern", gamma=3.0), B)
    with pytest.raises(MldiffError, match=r"^priors\.smooth: species A is rougher than Q "
                       r"beyond what the forward process noises at wavenumbers [\d.]+-[\d.]+ "
                       r".*use the prior fitted to the data .* or a smaller gamma$"):
        check_prior(process, x, _geometry(), "smooth")
    # Fitted to the same data: c/λ ≈ 1 in every shell, nothing to say.
    check_prior(VPSDE(Fitted.fit(x, B), B), x, _geometry(), "fitted")
    # Data far smoother than Q (a ring with a 1e-6 floor under white Q): a warning only.
    ring = _ring().sample((64, 2), 16, B, torch.Generator(), torch.float64)
    caplog.clear()
    check_prior(VPSDE(build_prior("white"), B), ring, _geometry(), "white")
    assert not [r for r in caplog.records if "rougher" in r.getMessage()]
    assert any("smoother than the sampler resolves" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_unet_samples_keep_the_data_variance_at_its_training_grid():
    # FitzHugh–Nagumo u simulated by the project (64², restricted to 16²), the fitted prior.
    # Measured at 800 steps: with GroupNorm layers and Matérn Q the UNet sampled 325x the data's
    # variance (mean mode 10^4x); without them 4.9x (Matérn) and 1.04x (fitted).
    from mldiff.datasets import restrict
    from mldiff.pde import simulate_dataset

    ds = simulate_dataset("fitzhugh_nagumo", None, 64, [2.5], 64, 0, laplacian="finite_volume",
                          batch_size=64, device="cpu", progress=False)
    u = torch.from_numpy(ds["u"].isel(time=0).values)[:, None].float()
    x = restrict(u, 4, "average", "neumann")
    x = (x - x.mean()) / x.std()
    process = VPSDE(Fitted.fit(x, "neumann"), "neumann")
    net = _train(process, x, 800, arch="unet")
    s = sample_em(process, net, 64, 1, 16, 50, torch.Generator().manual_seed(2), progress=False)
    assert 0.5 < float(s.var() / x.var()) < 2
