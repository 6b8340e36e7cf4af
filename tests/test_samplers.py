"""Samplers driven by the exact Gaussian score reproduce the data law; contract and failures."""

import pytest
import torch

from mldiff import spectral
from mldiff.diffusion import VPSDE, GaussianScore, build_prior, sample_em, sample_ode
from mldiff.errors import MldiffError

BOUNDARIES = ("periodic", "neumann")
MEAN = 0.3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_problem(boundary):
    process = VPSDE(build_prior("matern"), boundary)
    data = build_prior("matern", gamma=2.0, tau=5.0, scale=20.0)
    return process, data, GaussianScore(process, data, mean=MEAN)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("sampler", "steps"), [(sample_em, 200), (sample_ode, 60)])
def test_sampler_with_exact_score_reproduces_data_covariance(sampler, steps, boundary):
    process, data, exact = _gaussian_problem(boundary)
    n, draws = 16, 1000
    x = sampler(process, exact, draws, 1, n, steps, _gen(1), progress=False)
    assert x.shape == (draws, 1, n, n) and x.dtype == torch.float32
    coef = spectral.forward(x.double() - MEAN, boundary) / n
    ratio = coef.abs().square().mean(0)[0] / data.eigenvalues(n, boundary)
    # one mode's variance estimate has sd ≤ √(2/1000) ≈ 4.5 %; pooled over 256 modes ≈ 0.3 %
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.02)
    assert float((ratio - 1).square().mean().sqrt()) < 0.06
    spread = float(data.eigenvalues(n, boundary)[0, 0] / draws) ** 0.5  # sd of the mean
    assert float(x.mean()) == pytest.approx(MEAN, abs=4 * spread)


def test_heun_is_second_order():
    process, _, exact = _gaussian_problem("periodic")

    def run(steps):
        return sample_ode(process, exact, 8, 1, 16, steps, _gen(2), False, torch.float64)

    reference = run(640)
    errors = [float((run(steps) - reference).square().mean().sqrt()) for steps in (20, 40, 80)]
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 3.3 < coarse / fine < 4.5


def test_samplers_are_seeded_and_work_at_any_resolution():
    process, _, exact = _gaussian_problem("neumann")
    for sampler in (sample_em, sample_ode):
        a = sampler(process, exact, 3, 2, 24, 7, _gen(3), progress=False)
        b = sampler(process, exact, 3, 2, 24, 7, _gen(3), progress=False)
        assert a.shape == (3, 2, 24, 24)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(a, sampler(process, exact, 3, 2, 24, 7, _gen(4), progress=False))


class _TwoGridVP(VPSDE):
    """A VP process whose state lives on the half grid for t > ½ (exercises the grid contract)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resized = []

    def grid_size(self, t, n_final):
        return n_final // 2 if t > 0.5 else n_final

    def resize(self, y, t_from, t_to, generator):
        self.resized.append((t_from, t_to, y.shape[-1]))
        return y.repeat_interleave(2, -1).repeat_interleave(2, -2)


@pytest.mark.parametrize("sampler", [sample_em, sample_ode])
def test_samplers_follow_grid_size_and_resize(sampler):
    process = _TwoGridVP(build_prior("matern"), "periodic")
    grids = []

    def net(y, t):
        grids.append(y.shape[-1])
        return torch.zeros_like(y)

    out = sampler(process, net, 2, 1, 16, 10, _gen(5), progress=False)
    assert out.shape == (2, 1, 16, 16)
    [(t_from, t_to, size)] = process.resized
    assert t_to <= 0.5 < t_from and size == 8
    assert set(grids) == {8, 16} and grids.index(16) > 0


@pytest.mark.parametrize("sampler", [sample_em, sample_ode])
@pytest.mark.parametrize(
    "net",
    [lambda y, t: torch.full_like(y, float("nan")), lambda y, t: 1e30 * (y + 1)],
    ids=["nan", "overflow"],
)
def test_diverging_network_raises(sampler, net):
    process = VPSDE(build_prior("matern"), "periodic")
    with pytest.raises(MldiffError, match=r"sampler diverged at step \d+, t=") as info:
        sampler(process, net, 2, 1, 8, 20, _gen(6), progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps: expected"),
        ({"batch": 0}, "batch: expected"),
        ({"channels": 1.5}, "channels: expected"),
        ({"n": 1}, "n: expected"),
    ],
)
def test_bad_sampler_arguments_raise(kwargs, message):
    process, _, exact = _gaussian_problem("periodic")
    args = {"batch": 2, "channels": 1, "n": 8, "steps": 4} | kwargs
    with pytest.raises(MldiffError, match=message):
        sample_em(process, exact, generator=_gen(), progress=False, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_stays_on_device():
    process, _, exact = _gaussian_problem("neumann")
    gen = torch.Generator("cuda").manual_seed(0)
    x = sample_ode(process, exact.cuda(), 4, 1, 32, 10, gen, progress=False)
    assert x.is_cuda and bool(torch.isfinite(x).all())


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_training_after_sampling_in_one_process(boundary):
    """Sampling runs in inference mode; nothing it caches (DCT matrices, prior eigenvalues,
    network buffers) may break a later training step on a fresh grid size."""
    from mldiff.models import FNO

    process = VPSDE(build_prior("matern"), boundary)
    n = 17 if boundary == "neumann" else 18  # a size no other test made first
    net = FNO(1, 1, width=4, modes=4, layers=1, boundary=boundary)
    sample_em(process, net, 2, 1, n, 2, _gen(5), progress=False)
    loss = process.loss(net, torch.randn(2, 1, n, n), torch.rand(2), _gen(6)).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
