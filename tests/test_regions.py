"""Regional composition: the grammar, the masks on the grid, the rule, and the CLI.

References are written out from eps* = eps(∅) + Σ w·s·M ⊙ (eps(c) − eps(∅)) with separate
denoiser calls per condition, never through compose() itself.
"""
import pytest
import torch
from PIL import Image

from compdiff.cli import main
from compdiff.compose import compose
from compdiff.compose_each import compose_each
from compdiff.errors import InputError, ParseError
from compdiff.expr import Concept, Term, parse
from compdiff.expr.region import NAMED, Region
from compdiff.regions import box_mask, load_mask, normalize_overlaps, region_masks
from tests.test_compose import ConvDenoiser, TableEncoder, _eps


@pytest.fixture
def setup():
    den, enc = ConvDenoiser(), TableEncoder()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 500, 999])
    return den, enc, x, t


def _mask(region, h=8, w=8, feather=0.0):
    return box_mask(region.coords, h, w, feather).double()


# ---- grammar ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,terms", [
    ('"a cat" @ left', [Term("a cat", 1.0, Region.named("left"))]),
    ('a red cube @ top-left :2', [Term("a red cube", 2.0, Region.named("top-left"))]),
    ('"a":1.5 @ (0.1, 0.2, 0.5, 0.9)', [Term("a", 1.5, Region.box(0.1, 0.2, 0.5, 0.9))]),
    ('"a" @ (0.1,0.2,0.5,0.9) :1.5', [Term("a", 1.5, Region.box(0.1, 0.2, 0.5, 0.9))]),
    ('NOT "blurry" @ top', [Term("blurry", -1.0, Region.named("top"))]),
    ('"fur" @ mask:fur_1', [Term("fur", 1.0, Region.mask("fur_1"))]),
    ('("a" @ left AND "b" @ right):2 AND NOT "c"',
     [Term("a", 2.0, Region.named("left")), Term("b", 2.0, Region.named("right")), Term("c", -1.0)]),
    # the same concept under two regions is two terms; under the same region, one (weights added)
    ('"a" @ left AND "a" @ right AND "a" @ left', [Term("a", 2.0, Region.named("left")),
                                                   Term("a", 1.0, Region.named("right"))]),
    ('"a" @ left AND "a"', [Term("a", 1.0, Region.named("left")), Term("a", 1.0)]),
])
def test_regions_parse_into_terms_and_print_back(text, terms):
    e = parse(text)
    assert e.terms() == terms
    assert parse(str(e)) == e


def test_regions_survive_or_clauses():
    clauses = parse('("a" @ left OR "b" @ right) AND "c"').clauses()
    assert [c.terms for c in clauses] == [(Term("a", 1.0, Region.named("left")), Term("c", 1.0)),
                                          (Term("b", 1.0, Region.named("right")), Term("c", 1.0))]


@pytest.mark.parametrize("text,what,column", [
    ('"a" @ lft', "unknown region 'lft'", 7),
    ('"a" @ (0.5, 0, 0.2, 1)', "empty region box", 7),
    ('"a" @ (0, 0, 0, 1)', "empty region box", 7),
    ('"a" @ (0, 0, 1.5, 1)', "box coordinate 1.5 is out of range", 14),
    ('"a" @ (0, -0.1, 1, 1)', "box coordinate -0.1 is out of range", 11),
    ('"a" @ (0, 0, 1)', "takes 4 numbers, got 3", 7),
    ('"a" @ (0, 0, x, 1)', "box coordinate 'x' is not a number", 14),
    ('"a" @ (0, 0, 1, 1', "unclosed '(' in a region box", 7),
    ('"a" @', "'@' with no region after it", 5),
    ('"a" @ AND "b"', "'@' with no region after it", 5),
    ('("a" AND "b") @ left', "a region on a group", 15),
    ('"a" @ left @ right', "second region", 12),
    ('@ left', "a region with no concept before it", 1),
    ('"a" @ mask:', "bad mask name", 12),
])
def test_bad_regions_are_parse_errors_with_a_caret(text, what, column):
    with pytest.raises(ParseError) as info:
        parse(text)
    first, shown, caret = str(info.value).split("\n")
    assert what in first and f"at column {column}" in first
    assert caret.index("^") - 2 == column - 1  # two spaces of indent before the window


def test_a_missing_mask_is_a_parse_error_when_the_masks_are_known():
    assert parse('"a" @ mask:face', masks=["face"]).terms()[0].region == Region.mask("face")
    with pytest.raises(ParseError, match="no mask named 'hair' at column 5.*masks given: face"):
        parse('"a" @ mask:hair', masks=["face"])


def test_region_nodes_validate_in_python():
    assert Concept("a", region="left").region == Region.named("left")
    assert Concept("a", region=(0, 0, 0.5, 1)).region == Region.box(0, 0, 0.5, 1)
    assert Concept("a", region="mask:m").region == Region.mask("m")
    for bad in ("lft", (0.5, 0, 0.5, 1), (0, 0, 2, 1), "mask:a b"):
        with pytest.raises(InputError):
            Concept("a", region=bad)


# ---- masks on the grid -----------------------------------------------------------------------
def test_box_masks_cover_the_cells_whose_centres_are_inside():
    m = box_mask((0.0, 0.0, 0.5, 1.0), 4, 4)
    assert m.tolist() == [[1, 1, 0, 0]] * 4
    m = box_mask((0.25, 0.5, 0.75, 1.0), 4, 4)
    assert m.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]]
    # an edge through cell centres (7 cells: centre of cell 3 is 0.5) gives 1/2 there
    assert box_mask((0.0, 0.0, 0.5, 1.0), 1, 7).tolist() == [[1, 1, 1, 0.5, 0, 0, 0]]


@pytest.mark.parametrize("feather", [0.0, 0.1, 0.3])
def test_full_image_is_ones_and_complementary_regions_sum_to_one(feather):
    assert torch.equal(box_mask((0, 0, 1, 1), 9, 7, feather), torch.ones(9, 7))
    for a, b in (("left", "right"), ("top", "bottom")):
        total = box_mask(NAMED[a], 9, 7, feather) + box_mask(NAMED[b], 9, 7, feather)
        assert torch.allclose(total, torch.ones(9, 7), atol=1e-6)
    m = box_mask(NAMED["left"], 1, 40, feather)[0]
    assert m[0] == 1 and m[-1] == 0 and bool((m[1:] <= m[:-1]).all())  # a monotone ramp


def test_feather_is_a_ramp_of_that_width_centred_on_the_edge():
    m = box_mask((0.0, 0.0, 0.5, 1.0), 1, 100, feather=0.2)[0]
    u = (torch.arange(100) + 0.5) / 100
    assert torch.allclose(m, (0.5 + (0.5 - u) / 0.2).clamp(0, 1), atol=1e-6)


def test_caller_masks_are_resized_and_per_sample_masks_stay_per_sample(tmp_path):
    big = torch.zeros(64, 64)
    big[:, 32:] = 1
    out = region_masks([Region.mask("m"), None], 8, 8, masks={"m": big})
    assert out.shape == (2, 1, 8, 8) and torch.equal(out[1], torch.ones(1, 8, 8))
    assert torch.equal(out[0, 0], box_mask(NAMED["right"], 8, 8))
    per = torch.stack([big, 1 - big])
    out = region_masks([Region.mask("m")], 8, 8, masks={"m": per}, batch=2)
    assert out.shape == (1, 2, 8, 8) and torch.equal(out[0, 1], box_mask(NAMED["left"], 8, 8))
    with pytest.raises(InputError, match="3 per-sample masks but the batch has 2"):
        region_masks([Region.mask("m")], 8, 8, masks={"m": torch.zeros(3, 4, 4)}, batch=2)
    with pytest.raises(InputError, match="values in \\[0, 1\\]"):
        region_masks([Region.mask("m")], 8, 8, masks={"m": big * 2})
    with pytest.raises(InputError, match="no mask of that name"):
        region_masks([Region.mask("x")], 8, 8, masks={"m": big})
    Image.fromarray((big.numpy() * 255).astype("uint8")).convert("RGB").save(tmp_path / "m.png")
    assert torch.equal(load_mask(tmp_path / "m.png"), big)
    with pytest.raises(InputError, match="does not exist"):
        load_mask(tmp_path / "nope.png")


def test_normalize_divides_overlapping_positive_regions_only():
    maps = torch.ones(3, 1, 1, 2, 2)
    maps[1, 0, 0, 0, 0] = 0  # term 1 misses one cell
    weights = torch.tensor([[2.0], [1.0], [-1.0]])
    out = normalize_overlaps(maps, weights, torch.tensor([True, True, True]))
    assert out[0, 0, 0, 0, 0] == 1 and out[0, 0, 0, 1, 1] == 0.5  # alone / shared with term 1
    assert torch.equal(out[2], maps[2])  # a negative term is untouched
    out = normalize_overlaps(maps, weights, torch.tensor([True, False, True]))
    assert torch.equal(out, maps)  # term 1 has no region: nothing overlaps


# ---- the rule ------------------------------------------------------------------------------
def test_a_region_confines_its_delta_with_exact_zeros_outside(setup):
    den, enc, x, t = setup
    e_u, e_a, e_b = _eps(den, enc, x, t), _eps(den, enc, x, t, "a"), _eps(den, enc, x, t, "b")
    out = compose(den, enc, '"a" @ left AND "b":0.5 @ (0.25, 0.5, 1, 1)', guidance_scale=3.0)(x, t)
    Ma, Mb = _mask(Region.named("left")), _mask(Region.box(0.25, 0.5, 1, 1))
    ref = e_u + 3.0 * Ma * (e_a - e_u) + 1.5 * Mb * (e_b - e_u)
    assert torch.allclose(out, ref, atol=1e-12)
    outside = (Ma + Mb) == 0
    assert outside.any() and torch.equal(out[..., outside], e_u[..., outside])  # exact, not close


def test_full_image_region_equals_no_region_exactly(setup):
    den, enc, x, t = setup
    plain = compose(den, enc, '"a" AND NOT "b":0.5', guidance_scale=3.0, rescale=0.5, negation="perp")(x, t)
    full = compose(den, enc, '"a" @ (0, 0, 1, 1) AND NOT "b":0.5 @ (0,0,1,1)', guidance_scale=3.0, rescale=0.5,
                   negation="perp", feather=0.2)(x, t)
    assert torch.allclose(full, plain, atol=1e-12)


def test_a_regional_not_pushes_away_only_inside_its_region(setup):
    den, enc, x, t = setup
    e_u, e_a = _eps(den, enc, x, t), _eps(den, enc, x, t, "a")
    out = compose(den, enc, 'NOT "a" @ right', guidance_scale=2.0)(x, t)
    M = _mask(Region.named("right"))
    assert torch.allclose(out, e_u - 2.0 * M * (e_a - e_u), atol=1e-12)  # the sign: away from "a"
    assert torch.equal(out[..., :4], e_u[..., :4])


def test_one_row_per_concept_whatever_its_regions(setup):
    den, enc, x, t = setup
    e_u, e_a = _eps(den, enc, x, t), _eps(den, enc, x, t, "a")
    fn = compose(den, enc, '"a" @ left AND "a":0.5 @ top', guidance_scale=2.0)
    den.calls = den.rows = 0
    out = fn(x, t)
    assert (den.calls, den.rows) == (1, 2 * x.shape[0])  # null + one row of "a"
    w = 2.0 * _mask(Region.named("left")) + 1.0 * _mask(Region.named("top"))
    assert torch.allclose(out, e_u + w * (e_a - e_u), atol=1e-12)


def test_batched_regions_equal_each_sample_alone(setup):
    den, enc, x, t = setup
    fn = compose(den, enc, '"a" @ left AND NOT "b" @ top-right AND "c"', guidance_scale=2.0, feather=0.1,
                 negation="perp", rescale=0.3)
    whole = fn(x, t)
    for b in range(x.shape[0]):
        assert torch.allclose(whole[b:b + 1], fn(x[b:b + 1], t[b:b + 1]), atol=1e-12)


def test_per_sample_masks_give_each_sample_its_own_region(setup):
    den, enc, x, t = setup
    masks = torch.stack([_mask(Region.named(n)).float() for n in ("left", "right", "center")])
    out = compose(den, enc, '"a" @ mask:m', guidance_scale=2.0, masks={"m": masks})(x, t)
    for b, name in enumerate(("left", "right", "center")):
        one = compose(den, enc, f'"a" @ {name}', guidance_scale=2.0)(x[b:b + 1], t[b:b + 1])
        assert torch.allclose(out[b:b + 1], one, atol=1e-12)


def test_normalize_mode_shares_guidance_where_regions_overlap(setup):
    den, enc, x, t = setup
    e_u, e_a, e_b = _eps(den, enc, x, t), _eps(den, enc, x, t, "a"), _eps(den, enc, x, t, "b")
    out = compose(den, enc, '"a" @ left AND "b" @ top', guidance_scale=2.0, region_mode="normalize")(x, t)
    Ma, Mb = _mask(Region.named("left")), _mask(Region.named("top"))
    total = (Ma + Mb).clamp(min=1)
    assert torch.allclose(out, e_u + 2.0 * Ma / total * (e_a - e_u) + 2.0 * Mb / total * (e_b - e_u), atol=1e-12)


def test_perp_not_with_a_region_projects_per_sample(setup):
    den, enc, x, t = setup
    e_u, e_a, e_b = _eps(den, enc, x, t), _eps(den, enc, x, t, "a"), _eps(den, enc, x, t, "b")
    out = compose(den, enc, '"a" @ left AND NOT "b" @ bottom', guidance_scale=2.0, negation="perp")(x, t)
    Ma, Mb = _mask(Region.named("left")), _mask(Region.named("bottom"))
    P = 2.0 * Ma * (e_a - e_u)
    d = e_b - e_u
    coef = (d * P).sum((1, 2, 3), keepdim=True) / (P * P).sum((1, 2, 3), keepdim=True)
    ref = e_u + P - 2.0 * Mb * (d - coef * P)
    assert torch.allclose(out, ref, atol=1e-10)


def test_rescale_reference_is_mask_weighted(setup):
    den, enc, x, t = setup
    e_u, e_a = _eps(den, enc, x, t), _eps(den, enc, x, t, "a")
    out = compose(den, enc, '"a" @ left', guidance_scale=4.0, rescale=1.0)(x, t)
    M = _mask(Region.named("left"))
    eps = e_u + 4.0 * M * (e_a - e_u)
    ref = torch.where(M > 0, e_a, e_u)
    dims = (1, 2, 3)
    assert torch.allclose(out, eps * ref.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True), atol=1e-12)


def test_compose_each_regions_equal_compose_per_sample(setup):
    den, enc, x, t = setup
    exprs = ['"a" @ left AND "b" @ right', '"b" @ (0.1, 0.1, 0.6, 0.9) AND NOT "c"', '"a"']
    each = compose_each(den, enc, exprs, guidance_scale=2.5, feather=0.15, region_mode="normalize")(x, t)
    for b, e in enumerate(exprs):
        one = compose(den, enc, e, guidance_scale=2.5, feather=0.15, region_mode="normalize")(x[b:b + 1], t[b:b + 1])
        assert torch.allclose(each[b:b + 1], one, atol=1e-12)


def test_region_errors_are_input_errors(setup):
    den, enc, x, t = setup
    with pytest.raises(InputError, match="mask:m but no mask"):
        compose(den, enc, '"a" @ mask:m')
    with pytest.raises(InputError, match="feather"):
        compose(den, enc, '"a" @ left', feather=2.0)
    with pytest.raises(InputError, match="region_mode"):
        compose_each(den, enc, ['"a" @ left'], region_mode="max")
    fn = compose(den, enc, '"a" @ left')
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        fn(torch.zeros(2, 5, dtype=torch.float64), torch.tensor([1, 2]))


# ---- the CLI -----------------------------------------------------------------------------------
def test_cli_samples_with_regions_and_a_mask(tiny_model, tmp_path, capsys):
    mask = tmp_path / "right.png"
    Image.fromarray(box_mask(NAMED["right"], 32, 32).mul(255).byte().numpy()).save(mask)
    out = tmp_path / "grid.png"
    rc = main(["sample", '"0.3,0.5" @ left AND "0.7,0.5" @ mask:r AND NOT "0.5,0.2" @ top', "--model", tiny_model,
               "--mask", f"r={mask}", "--feather", "0.1", "--region-mode", "normalize", "--n", "2", "--steps", "2",
               "--out", str(out), "--no-progress"])
    assert rc == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "0.3,0.5  @ left" in printed and "0.7,0.5  @ mask:r" in printed and "-3.000  0.5,0.2  @ top" in printed


@pytest.mark.parametrize("expr,extra,message", [
    ('"0.3,0.5" @ mask:q', [], "no mask named 'q' at column 11"),
    ('"0.3,0.5" @ mask:q', ["--mask", "q=MISSING"], "does not exist"),
    ('"0.3,0.5"', ["--mask", "q=MASK"], "the expression has no region mask:q"),
    ('"0.3,0.5" @ mask:q', ["--mask", "q"], "write NAME=FILE"),
    ('"0.3,0.5" @ mask:q', ["--mask", "q=MASK", "--mask", "q=MASK"], "given twice"),
    ('"0.3,0.5" @ (0, 0, 1.2, 1)', [], "out of range at column"),
    ('"0.3,0.5" @ left', ["--feather", "2"], "--feather"),
    ('"0.3,0.5" @ left', ["--region-mode", "max"], "--region-mode"),
])
def test_cli_region_errors_exit_2_without_a_file(tiny_model, tmp_path, capsys, expr, extra, message):
    mask = tmp_path / "m.png"
    Image.new("L", (8, 8), 255).save(mask)
    extra = [a.replace("MISSING", str(tmp_path / "nope.png")).replace("MASK", str(mask)) for a in extra]
    out = tmp_path / "grid.png"
    rc = main(["sample", expr, "--model", tiny_model, "--steps", "2", "--out", str(out), "--no-progress", *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("compdiff: error:") and message in err
    assert not out.exists()


def test_explain_shows_each_terms_region(capsys):
    assert main(["explain", '"a" @ left AND "b" @ (0.1, 0.2, 0.3, 0.4) AND NOT "c" AND "d" @ mask:m']) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(l for l in lines if l.strip().startswith("concept"))):]
    assert table[0].split()[-1] == "region"
    assert table[1].endswith("left (0.0, 0.0, 0.5, 1.0)") and table[2].endswith("box (0.1, 0.2, 0.3, 0.4)")
    assert table[3].endswith("whole image") and "mask 'm'" in table[4]
