"""OR: a mixture of AND clauses, one clause per sample, all in one batched forward."""
import pytest
import torch
from analytic import GaussianConcepts
from test_compose import ConvDenoiser, TableEncoder

from compdiff.compose import compose
from compdiff.errors import InputError
from compdiff.sampling import generators, randn, sample_ddim
from compdiff.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(1000)


def _two_modes():
    return GaussianConcepts(SCHEDULE, means=torch.tensor([[0.0, 0.0], [-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64),
                            stds=torch.tensor([4.0, 0.5, 0.5], dtype=torch.float64))


def test_mixture_of_two_gaussians_has_the_fractions_pi():
    gc, n = _two_modes(), 20000
    eps_fn = compose(gc, gc, '"1":3 OR "2":7')
    assert eps_fn.clause_probs.tolist() == pytest.approx([0.3, 0.7])
    g = torch.Generator().manual_seed(0)
    choice = eps_fn.draw_clauses(n, g)
    x = sample_ddim(eps_fn.with_clauses(choice), torch.randn(n, 2, generator=g, dtype=torch.float64), SCHEDULE, 50)
    left = x[:, 0] < 0
    assert abs(left.double().mean().item() - 0.3) < 0.02
    assert torch.equal(left, choice == 0)  # every sample lands in the mode of its clause
    for j, mode in ((0, -3.0), (1, 3.0)):  # and follows that concept's Gaussian (std 0.5; DDIM-50's
        xs = x[choice == j]  # discretisation gives 0.472, measured)
        assert abs(xs[:, 0].mean().item() - mode) < 0.03 and abs(xs.std(0).mean().item() - 0.5) < 0.04


def test_one_forward_over_the_union_equals_each_clause_composed_alone():
    den, enc = ConvDenoiser(), TableEncoder()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([10, 300, 600, 999])
    eps_fn = compose(den, enc, '("a" AND NOT "c") OR ("b":2 AND "a")', guidance_scale=3.0, negation="perp")
    assert eps_fn.concepts == ["a", "c", "b"]
    bound = eps_fn.with_clauses([1, 0, 0, 1])
    den.calls = 0
    out = bound(x, t)
    assert den.calls == 1 and bound.rows_evaluated == 4 * 4
    alone = {0: compose(den, enc, '"a" AND NOT "c"', guidance_scale=3.0, negation="perp"),
             1: compose(den, enc, '"b":2 AND "a"', guidance_scale=3.0, negation="perp")}
    for i, c in enumerate([1, 0, 0, 1]):
        torch.testing.assert_close(out[i:i + 1], alone[c](x[i:i + 1], t[i:i + 1]), rtol=1e-12, atol=1e-12)
    # concepts no sample of the batch uses are not evaluated: clause 1 only needs a and b
    only1 = eps_fn.with_clauses([1, 1, 1, 1])
    only1(x, t)
    assert only1.rows_evaluated == 4 * 3


def test_clause_draws_are_per_sample_and_reproducible():
    gc = _two_modes()
    eps_fn = compose(gc, gc, '"1" OR "2"')
    batch = eps_fn.draw_clauses(6, generators(range(6)))
    assert torch.equal(eps_fn.draw_clauses(2, generators([4, 1])), batch[[4, 1]])
    # and the whole sample is per sample: clause draw, then noise, from the same generator
    def run(seeds):
        gens = generators(seeds)
        choice = eps_fn.draw_clauses(len(seeds), gens)
        x_T = randn((len(seeds), 2), gens, dtype=torch.float64)
        return sample_ddim(eps_fn.with_clauses(choice), x_T, SCHEDULE, 10, eta=1.0, generator=gens)
    torch.testing.assert_close(run([5]), run([3, 5, 8])[1:2], rtol=1e-12, atol=1e-12)


def test_without_or_nothing_changes_and_or_needs_bound_clauses():
    gc = _two_modes()
    plain = compose(gc, gc, '"1" AND NOT "2"')
    assert len(plain.clauses) == 1 and torch.equal(plain.draw_clauses(3), torch.zeros(3, dtype=torch.long))
    mix = compose(gc, gc, '"1" OR "2"')
    x, t = torch.zeros(3, 2, dtype=torch.float64), torch.tensor(500)
    with pytest.raises(InputError, match="with_clauses"):
        mix(x, t)
    with pytest.raises(ValueError):
        mix.with_clauses([0, 1])(x, t)  # bound to 2 samples, called with 3
    with pytest.raises(ValueError):
        mix.with_clauses([0, 2, 1])
    with pytest.raises(InputError, match="NOT of an expression with OR"):
        compose(gc, gc, 'NOT ("1" OR "2")')
