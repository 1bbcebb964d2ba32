"""Baseline merge methods checked against hand-worked values, per-entry loops and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from uqmerge.core.errors import ConfigError, PlanError
from uqmerge.methods import MergeInputs, get_method
from uqmerge.methods.baselines import BASELINE_METHODS
from uqmerge.methods.task_vector import (
    band_prune,
    della_keep_probabilities,
    della_prune,
    magnitude_prune,
    random_prune,
)

METHOD_NAMES = [m.name for m in BASELINE_METHODS]
RANDOMIZED = [m.name for m in BASELINE_METHODS if m.randomized]


def merge(name, models, base=None, *, seed=None, per_model=None, params=None):
    """Run registered method ``name`` on one tensor; a generator seeded with ``seed`` if given."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    inputs = MergeInputs(
        name="layer.weight",
        models=models,
        base=base,
        per_model=per_model or {},
        params=params or {},
        generator=generator,
    )
    return get_method(name).merge(inputs)


def quantized(*shape, generator, low=-3, high=4):
    """Multiples of 1/4: sums and products stay exact, magnitudes and votes tie often."""
    return torch.randint(low, high, shape, generator=generator).float() / 4


def expert_set(shape=(4, 6), n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]


# --------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_eight_baselines_with_paper_url_and_ranges():
    assert sorted(METHOD_NAMES) == sorted(
        [
            "linear",
            "task_arithmetic",
            "ties",
            "dare_linear",
            "dare_ties",
            "della",
            "model_stock",
            "breadcrumbs",
        ]
    )
    for method in BASELINE_METHODS:
        assert method.paper and method.url.startswith("https://arxiv.org/abs/"), method.name
        assert method.merge.__doc__ and method.url in method.merge.__doc__, method.name
    assert set(RANDOMIZED) == {"dare_linear", "dare_ties", "della"}
    assert not get_method("linear").requires_base
    assert get_method("model_stock").min_models == 2
    assert get_method("ties").param("density").describe_range() == "(0, 1]"
    assert get_method("breadcrumbs").param("gamma").describe_range() == "[0, 1)"
    assert get_method("della").param("epsilon").describe_range() == "[0, 1)"
    assert get_method("task_arithmetic").param("weight").low is None  # negative weights allowed
    assert get_method("ties").param("weight").low == 0.0
    assert not get_method("task_arithmetic").param("lambda").per_model


# ----------------------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_all_experts_equal_to_base_gives_the_base(name):
    base = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    out = merge(name, [base.clone() for _ in range(3)], base, seed=0)
    torch.testing.assert_close(out, base)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods_never_modify_their_inputs(name):
    base, models = expert_set()
    base_copy, model_copies = base.clone(), [m.clone() for m in models]
    merge(name, models, base, seed=3)
    assert torch.equal(base, base_copy)
    assert all(torch.equal(m, c) for m, c in zip(models, model_copies, strict=True))


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("shape", [(), (1,), (9,), (3, 4, 5), (0, 4)])
def test_methods_keep_shape_and_fp32(name, shape):
    base, models = expert_set(shape)
    out = merge(name, models, base, seed=0)
    assert out.shape == base.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "ties"])
def test_a_weight_zero_model_changes_nothing(name):
    g = torch.Generator().manual_seed(5)
    base = quantized(6, 5, generator=g)
    models = [base + quantized(6, 5, generator=g) for _ in range(3)]
    with_zero = merge(name, models, base, per_model={"weight": [1.0, 0.0, 0.5]})
    without = merge(name, [models[0], models[2]], base, per_model={"weight": [1.0, 0.5]})
    assert torch.equal(with_zero, without)


@pytest.mark.parametrize("name", RANDOMIZED)
def test_randomized_methods_repeat_with_the_same_seed_and_differ_with_another(name):
    base, models = expert_set((16, 16))
    first = merge(name, models, base, seed=11)
    again = merge(name, models, base, seed=11)
    other = merge(name, models, base, seed=12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# --------------------------------------------------------------------------------- linear, task arithmetic


def test_linear_is_the_weighted_average_and_needs_no_base():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 8.0, -3.0])
    out = merge("linear", [a, b], None, per_model={"weight": [1.0, 3.0]})
    torch.testing.assert_close(out, torch.tensor([(1 + 12) / 4, (2 + 24) / 4, (3 - 9) / 4]))


def test_linear_allows_negative_weights_but_not_a_zero_sum():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])
    out = merge("linear", [a, b], None, per_model={"weight": [2.0, -1.0]})
    torch.testing.assert_close(out, torch.tensor([-1.0, -1.0]))
    with pytest.raises(ConfigError, match="weight"):
        merge("linear", [a, b], None, per_model={"weight": [0.1 + 0.2, -0.3]})


def test_task_arithmetic_adds_lambda_times_the_weighted_task_vectors():
    base = torch.tensor([1.0, -1.0, 0.5])
    models = [torch.tensor([2.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 1.5])]
    out = merge("task_arithmetic", models, base, per_model={"weight": [2.0, -1.0]}, params={"lambda": 0.5})
    # τ1 = [1, 0, -0.5], τ2 = [0, 2, 1]; 2τ1 − τ2 = [2, -2, -2]; × 0.5 = [1, -1, -1]
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0, -0.5]))


# ------------------------------------------------------------------------------------------------- TIES


def test_ties_matches_a_hand_worked_two_model_example():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    tau1 = torch.tensor([0.5, -0.2, 0.1, -0.4, 0.3])
    tau2 = torch.tensor([-0.3, 0.6, 0.0, 0.3, -0.1])
    # density 0.6 of 5 → 3 kept:  τ̂1 = [0.5, 0, 0, -0.4, 0.3]   τ̂2 = [-0.3, 0.6, 0, 0.3, 0]
    # weights 1, 2 → votes Σ w τ̂ = [-0.1, 1.2, 0, 0.2, 0.3] → γ = [-, +, none, +, +]
    # agreeing:  e0 model2 (-0.6 / 2), e1 model2 (1.2 / 2), e2 nobody, e3 model2 (0.6 / 2), e4 model1 (0.3 / 1)
    expected_delta = torch.tensor([-0.3, 0.6, 0.0, 0.3, 0.3])
    out = merge(
        "ties",
        [base + tau1, base + tau2],
        base,
        per_model={"weight": [1.0, 2.0], "density": [0.6, 0.6]},
        params={"lambda": 0.5},
    )
    torch.testing.assert_close(out, base + 0.5 * expected_delta)


def test_ties_exact_vote_tie_elects_no_sign_and_keeps_the_base():
    base = torch.zeros(2)
    models = [torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 1.0])]
    out = merge("ties", models, base, per_model={"density": [1.0, 1.0]})
    torch.testing.assert_close(out, torch.tensor([0.0, 1.5]))


def test_ties_is_odd_in_the_task_vectors():
    base, models = expert_set((8, 8))
    params = {"per_model": {"density": [0.3, 0.5, 0.7]}}
    out = merge("ties", models, base, **params)
    flipped = merge("ties", [2 * base - m for m in models], base, **params)
    torch.testing.assert_close(flipped - base, -(out - base))


def _ties_by_loops(base, models, weights, density, lam):
    """TIES written entry by entry in float64 Python, independent of the tensor kernels."""
    n = base.numel()
    k = min(n, max(1, math.floor(density * n + 0.5)))
    taus = [(m - base).reshape(-1).tolist() for m in models]
    trimmed = []
    for tau in taus:
        keep = set(sorted(range(n), key=lambda j: (-abs(tau[j]), j))[:k])
        trimmed.append([tau[j] if j in keep else 0.0 for j in range(n)])
    out = []
    for j in range(n):
        vote = sum(w * t[j] for w, t in zip(weights, trimmed, strict=True))
        sign = (vote > 0) - (vote < 0)
        num = den = 0.0
        for w, t in zip(weights, trimmed, strict=True):
            if sign != 0 and w * t[j] * sign > 0:
                num += w * t[j]
                den += w
        out.append(base.reshape(-1)[j].item() + lam * (num / den if den else 0.0))
    return torch.tensor(out).reshape(base.shape)


@pytest.mark.parametrize("density", [0.25, 0.5, 1.0])
def test_ties_matches_an_entry_by_entry_loop_with_many_ties(density):
    g = torch.Generator().manual_seed(7)
    base = quantized(5, 6, generator=g)
    models = [base + quantized(5, 6, generator=g) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    out = merge(
        "ties",
        models,
        base,
        per_model={"weight": weights, "density": [density] * 3},
        params={"lambda": 0.75},
    )
    torch.testing.assert_close(out, _ties_by_loops(base, models, weights, density, 0.75))


def test_magnitude_prune_rounds_half_up_keeps_one_and_breaks_ties_by_index():
    x = torch.tensor([0.3, -0.3, 0.3, 0.1])
    assert torch.equal(magnitude_prune(x, 0.5), torch.tensor([0.3, -0.3, 0.0, 0.0]))
    y = torch.tensor([1.0, -4.0, 3.0, 2.0, -5.0])
    assert torch.equal(magnitude_prune(y, 0.5), torch.tensor([0.0, -4.0, 3.0, 0.0, -5.0]))  # 2.5 → 3
    assert torch.equal(magnitude_prune(y, 0.01), torch.tensor([0.0, 0.0, 0.0, 0.0, -5.0]))  # at least 1
    assert torch.equal(magnitude_prune(y, 1.0), y)


def test_magnitude_prune_matches_a_sorted_index_loop():
    g = torch.Generator().manual_seed(2)
    x = quantized(4, 5, 3, generator=g)
    flat = x.reshape(-1).tolist()
    k = math.floor(0.4 * len(flat) + 0.5)
    keep = set(sorted(range(len(flat)), key=lambda j: (-abs(flat[j]), j))[:k])
    expected = torch.tensor([v if j in keep else 0.0 for j, v in enumerate(flat)]).reshape(x.shape)
    assert torch.equal(magnitude_prune(x, 0.4), expected)


# ---------------------------------------------------------------------------------------------- DARE


def test_dare_keeps_survivors_scaled_by_one_over_density_and_zeros_the_rest():
    tau = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    out = random_prune(tau, 0.3, torch.Generator().manual_seed(1))
    kept = out != 0
    torch.testing.assert_close(out[kept], tau[kept] / 0.3)
    assert abs(kept.float().mean().item() - 0.3) < 0.005


def test_dare_masks_are_drawn_in_model_order_from_the_generator():
    base, models = expert_set((3, 7), n=2)
    densities = [0.4, 0.7]
    out = merge("dare_linear", models, base, seed=9, per_model={"density": densities, "weight": [1.0, 2.0]})
    g = torch.Generator().manual_seed(9)
    expected = base.clone()
    for model, density, weight in zip(models, densities, [1.0, 2.0], strict=True):
        mask = torch.rand(base.shape, generator=g) < density
        expected += weight * (model - base) * mask / density
    torch.testing.assert_close(out, expected)


def test_dare_masks_come_from_each_models_own_generator_when_given():
    """The engine's seeding contract: model i's mask is drawn from generators[i], in flat order."""
    base, models = expert_set((3, 7), n=2)
    densities = [0.4, 0.7]
    generators = [torch.Generator().manual_seed(21), torch.Generator().manual_seed(22)]
    inputs = MergeInputs("layer.weight", models, base, {"density": densities}, {}, generators=generators)
    out = get_method("dare_linear").merge(inputs)
    expected = base.clone()
    for i, (model, density) in enumerate(zip(models, densities, strict=True)):
        mask = torch.rand(base.shape, generator=torch.Generator().manual_seed(21 + i)) < density
        expected += (model - base) * mask / density
    torch.testing.assert_close(out, expected)


def test_dare_linear_expectation_over_seeds_is_task_arithmetic():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(8, generator=g)
    models = [base + torch.randn(8, generator=g) for _ in range(2)]
    per_model = {"weight": [1.0, 0.5], "density": [0.5, 0.5]}
    seeds = 4000
    mean = sum(merge("dare_linear", models, base, seed=s, per_model=per_model) for s in range(seeds)) / seeds
    target = merge("task_arithmetic", models, base, per_model={"weight": [1.0, 0.5]})
    # per-entry variance of one draw: Σ w² τ² (1 − d) / d with d = 0.5
    variance = sum(w**2 * (m - base) ** 2 for w, m in zip([1.0, 0.5], models, strict=True))
    assert ((mean - target).abs() <= 5 * (variance / seeds).sqrt() + 1e-5).all()


def test_dare_at_density_one_is_task_arithmetic_and_untrimmed_ties():
    base, models = expert_set()
    full = {"density": [1.0] * 3}
    torch.testing.assert_close(
        merge("dare_linear", models, base, seed=0, per_model=full), merge("task_arithmetic", models, base)
    )
    torch.testing.assert_close(
        merge("dare_ties", models, base, seed=0, per_model=full), merge("ties", models, base, per_model=full)
    )


# --------------------------------------------------------------------------------------------- DELLA


def test_della_keep_probabilities_match_a_hand_worked_row():
    row = torch.tensor([0.3, -0.1, 0.2, 0.0, -0.5])
    # ascending |τ| ranks [3, 1, 2, 0, 4]; p = 0.4 + 0.2 · rank / 4
    expected = torch.tensor([0.55, 0.45, 0.5, 0.4, 0.6])
    torch.testing.assert_close(della_keep_probabilities(row, 0.5, 0.1), expected)


def test_della_keep_probabilities_rise_with_magnitude_within_each_row():
    g = torch.Generator().manual_seed(3)
    tau = quantized(3, 4, 5, generator=g)  # rows of 20 entries with many equal magnitudes
    probs = della_keep_probabilities(tau, 0.4, 0.15)
    for row, p in zip(tau.reshape(3, -1).tolist(), probs.reshape(3, -1).tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda j: (abs(row[j]), j))
        for rank, j in enumerate(ranked):
            assert p[j] == pytest.approx(0.25 + 0.3 * rank / (len(row) - 1), abs=1e-6)


def test_della_prune_is_unbiased_and_keeps_entries_at_their_probability():
    tau = torch.tensor([[0.1, -2.0, 0.7, 1.2], [3.0, -0.2, 0.05, 0.4]])
    probs = della_keep_probabilities(tau, 0.5, 0.2)
    draws = 4000
    samples = torch.stack([della_prune(tau, 0.5, 0.2, torch.Generator().manual_seed(s)) for s in range(draws)])
    kept_share = (samples != 0).float().mean(dim=0)
    assert ((kept_share - probs).abs() <= 5 * (probs * (1 - probs) / draws).sqrt()).all()
    std_of_mean = (tau**2 * (1 - probs) / probs / draws).sqrt()
    assert ((samples.mean(dim=0) - tau).abs() <= 5 * std_of_mean).all()


def test_della_with_zero_epsilon_equals_dare_ties():
    base, models = expert_set((6, 9))
    per_model = {"density": [0.3, 0.6, 0.8]}
    della = merge("della", models, base, seed=5, per_model=per_model, params={"epsilon": 0.0})
    dare_ties = merge("dare_ties", models, base, seed=5, per_model=per_model)
    torch.testing.assert_close(della, dare_ties)


def test_della_rejects_a_probability_band_outside_zero_one():
    base, models = expert_set(n=2)
    with pytest.raises(ConfigError, match="epsilon"):
        merge("della", models, base, seed=0, per_model={"density": [0.5, 0.05]}, params={"epsilon": 0.1})
    with pytest.raises(ConfigError, match="density"):
        merge("della", models, base, seed=0, per_model={"density": [0.95, 0.5]}, params={"epsilon": 0.1})
    merge("della", models, base, seed=0, per_model={"density": [0.9, 0.5]}, params={"epsilon": 0.1})


# ---------------------------------------------------------------------------------------- breadcrumbs


def test_breadcrumbs_drops_the_top_gamma_keeps_the_next_density_then_adds():
    tau = torch.tensor([0.9, -0.1, 0.5, -0.7, 0.2, 0.05, 0.3, -0.4, 0.6, 0.8])
    # drop the 2 largest (0.9, 0.8), keep the next 3 (-0.7, 0.6, 0.5)
    band = torch.tensor([0.0, 0.0, 0.5, -0.7, 0.0, 0.0, 0.0, 0.0, 0.6, 0.0])
    base = torch.linspace(-1, 1, 10)
    out = merge(
        "breadcrumbs",
        [base + tau, base - tau],
        base,
        per_model={"density": [0.3, 0.3], "gamma": [0.2, 0.0], "weight": [1.0, 0.5]},
        params={"lambda": 2.0},
    )
    # model 2: -τ with gamma 0 keeps its 3 largest (0.9, 0.8, -0.7), negated
    band2 = -torch.tensor([0.9, 0.0, 0.0, -0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8])
    torch.testing.assert_close(out, base + 2.0 * (band + 0.5 * band2))


def test_band_prune_lets_density_win_when_rounding_overfills():
    # n = 3: gamma 0.5 → 2 dropped, density 0.5 → 2 kept; 4 > 3, so only 1 is dropped
    assert torch.equal(band_prune(torch.tensor([3.0, 1.0, 2.0]), 0.5, 0.5), torch.tensor([0.0, 1.0, 2.0]))


def test_breadcrumbs_rejects_density_plus_gamma_above_one():
    base, models = expert_set(n=2)
    with pytest.raises(ConfigError, match="gamma"):
        merge("breadcrumbs", models, base, per_model={"density": [0.95, 0.5], "gamma": [0.1, 0.1]})


# --------------------------------------------------------------------------------------------- Model Stock


def test_model_stock_of_two_identical_experts_is_that_expert():
    base, (expert,) = expert_set(n=1)
    torch.testing.assert_close(merge("model_stock", [expert, expert.clone()], base), expert)


def test_model_stock_matches_the_two_model_formula():
    base = torch.tensor([1.0, 1.0])
    models = [base + torch.tensor([1.0, 0.0]), base + torch.tensor([1.0, 1.0])]
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    expected = t * torch.tensor([2.0, 1.5]) + (1 - t) * base
    torch.testing.assert_close(merge("model_stock", models, base), expected)


def test_model_stock_uses_the_mean_pairwise_cosine_of_three_experts():
    base = torch.zeros(3)
    taus = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0]), torch.tensor([3.0, 3.0, 0.0])]
    cos = (0.0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3
    t = 3 * cos / (1 + 2 * cos)
    torch.testing.assert_close(merge("model_stock", taus, base), t * sum(taus) / 3)


@pytest.mark.parametrize(
    "second",
    [[0.0, 1.0], [-1.0, -0.5], [0.0, 0.0]],
    ids=["orthogonal", "negative-cosine", "zero-task-vector"],
)
def test_model_stock_falls_back_to_the_base_without_positive_agreement(second):
    base = torch.tensor([0.5, -0.5])
    models = [base + torch.tensor([1.0, 0.0]), base + torch.tensor(second)]
    torch.testing.assert_close(merge("model_stock", models, base), base)


def test_model_stock_needs_two_models():
    base, models = expert_set(n=1)
    with pytest.raises(ConfigError, match="two"):
        merge("model_stock", models, base)


# ------------------------------------------------------------------------------------ input validation


def test_out_of_range_and_unknown_parameters_are_config_errors():
    base, models = expert_set(n=2)
    with pytest.raises(ConfigError, match="density"):
        merge("ties", models, base, per_model={"density": [0.5, 0.0]})
    with pytest.raises(ConfigError, match="weight"):
        merge("ties", models, base, per_model={"weight": [1.0, -1.0]})
    with pytest.raises(ConfigError, match="densty"):
        merge("ties", models, base, per_model={"densty": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="lambda"):
        merge("model_stock", models, base, params={"lambda": 1.0})
    with pytest.raises(ConfigError, match="2 models"):
        merge("task_arithmetic", models, base, per_model={"weight": [1.0]})


def test_missing_base_generator_or_mismatched_shapes_are_plan_errors():
    base, models = expert_set(n=2)
    with pytest.raises(PlanError, match="base"):
        merge("task_arithmetic", models, None)
    with pytest.raises(PlanError, match="generator"):
        merge("dare_linear", models, base)
    with pytest.raises(PlanError, match="shapes"):
        merge("linear", [models[0], models[1].reshape(-1)], None)


# ------------------------------------------------------------------------ sign election from exact votes

# bf16-exact task vectors whose decimal vote 1.0·0.0703125 + 0.8·(−0.087890625) = 0.0703125 − 0.0703125 is 0;
# fp32 arithmetic (a fused multiply-add) leaves −1.05e-9 and elected "−", giving −0.0879 instead of the base.
ZERO_VOTE_TAUS = (0.0703125, -0.087890625)
ZERO_VOTE_WEIGHTS = [1.0, 0.8]


@pytest.mark.parametrize(
    ("name", "params"),
    [("ties", {}), ("dare_ties", {}), ("della", {"epsilon": 0.0})],
)
def test_a_vote_that_is_zero_in_decimal_arithmetic_elects_no_sign_and_keeps_the_base(name, params):
    base = torch.zeros(40)
    models = [torch.full((40,), tau) for tau in ZERO_VOTE_TAUS]
    assert all(torch.equal(m.bfloat16().float(), m) for m in models)
    assert (0.0703125 * 1.0) + (-0.087890625 * 0.8) == 0.0  # the vote, in float64
    per_model = {"weight": ZERO_VOTE_WEIGHTS, "density": [1.0, 1.0]}
    out = merge(name, models, base, seed=0, per_model=per_model, params=params)
    assert torch.equal(out, base)


def test_a_nonzero_vote_still_elects_its_sign():
    base = torch.zeros(3)
    models = [torch.full((3,), 0.0703125), torch.full((3,), -0.087890625)]
    out = merge("ties", models, base, per_model={"weight": [1.0, 0.81], "density": [1.0, 1.0]})
    # vote 0.0703125 − 0.81·0.087890625 < 0: only model 2 agrees, so the entry moves by its τ
    torch.testing.assert_close(out, torch.full((3,), -0.087890625))


def test_a_bfloat16_merge_keeps_the_base_where_the_decimal_vote_is_zero(tmp_path):
    from safetensors.torch import save_file

    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.engine.recipe import parse_merge_config

    config = '{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "dtype": "bfloat16"}'
    shape = (4, 6)
    paths = []
    for key, tau in (("base", 0.0), ("a", ZERO_VOTE_TAUS[0]), ("b", ZERO_VOTE_TAUS[1])):
        (tmp_path / key).mkdir()
        tensor = torch.full(shape, tau, dtype=torch.bfloat16)
        save_file({"model.layers.0.mlp.up_proj.weight": tensor}, str(tmp_path / key / "model.safetensors"))
        (tmp_path / key / "config.json").write_text(config)
        paths.append(str(tmp_path / key))
    cfg = {
        "merge_method": "ties",
        "base_model": paths[0],
        "models": [
            {"model": p, "parameters": {"weight": w}} for p, w in zip(paths[1:], ZERO_VOTE_WEIGHTS, strict=True)
        ],
        "parameters": {"density": 1.0},
    }
    merge_to_dir(parse_merge_config(cfg), tmp_path / "out", quiet=True)
    from safetensors.torch import load_file

    merged = load_file(str(tmp_path / "out" / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, torch.zeros(shape, dtype=torch.bfloat16))
