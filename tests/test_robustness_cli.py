"""Hostile input to the CLI: every bad invocation exits 2 with a complete first line
(``compdiff: error: ...`` naming the flag or the column), no traceback, no raw control
characters, bounded stderr and no file left behind; sampling runs in batches whose
images do not depend on the batch size; explain computes everything before printing."""
from __future__ import annotations

import contextlib
import io
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import compdiff.backends
from compdiff.cli import MAX_ERROR_CHARS, main
from compdiff.errors import ParseError
from compdiff.expr import parse

STDERR_BOUND = MAX_ERROR_CHARS + 200  # "compdiff: error: " and the last line's marks


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def raw_controls(text: str) -> list[str]:
    """Control characters a terminal would act on (line breaks excepted)."""
    return [c for c in text if c != "\n" and (unicodedata.category(c) in ("Cc", "Cs"))]


def check_error(rc: int, out: str, err: str, needle: str) -> str:
    """The shared contract of a bad invocation; returns the first line."""
    assert rc == 2, (rc, err)
    first = err.split("\n", 1)[0]
    assert first.startswith("compdiff: error: ") and len(first) > len("compdiff: error: ") + 10, err
    assert needle in first, (needle, first)
    assert "Traceback" not in err and not raw_controls(err) and len(err) <= STDERR_BOUND
    return first


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder holding a directory named d.png and a file named f.txt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.png").mkdir()
    (tmp_path / "f.txt").write_text("x")
    return tmp_path


S = ["sample", '"0.3,0.5" AND NOT "0.7,0.5"']
E = ["explain"]
W = ["world", "render", "--out", "w.png"]
BAD = [
    # sample: every numeric option, nan and inf
    (S + ["--guidance-scale", "nan"], "--guidance-scale"),
    (S + ["--guidance-scale", "inf"], "--guidance-scale"),
    (S + ["--guidance-scale", "-1e3"], "--guidance-scale"),
    (S + ["--eta", "nan"], "--eta"),
    (S + ["--eta", "1.5"], "--eta"),
    (S + ["--rescale", "-0.1"], "--rescale"),
    (S + ["--rescale", "nan"], "--rescale"),
    (S + ["--steps", "0"], "--steps"),
    (S + ["--steps", "100000"], "--steps"),
    (S + ["--n", "0"], "--n"),
    (S + ["--n", "abc"], "--n"),
    (S + ["--n", "65"], "--out-dir"),  # a grid holds 64; more need --out-dir
    (S + ["--n", "100000"], "--out-dir"),
    (S + ["--batch-size", "0"], "--batch-size"),
    (S + ["--seed", "-1"], "--seed"),
    (S + ["--seed", str(2**63 - 1), "--n", "2"], "--seed"),
    (S + ["--max-batch", "0"], "--max-batch"),
    (S + ["--corrector-steps", "0"], "--corrector-steps"),
    (S + ["--corrector-step-size", "nan"], "--corrector-step-size"),
    (S + ["--corrector-step-size", "0"], "--corrector-step-size"),
    (S + ["--correct-range", "0.8", "0.2"], "--correct-range"),
    (S + ["--correct-range", "nan", "1"], "--correct-range"),
    (S + ["--corrector-damping", "1"], "--corrector-damping"),
    (S + ["--correct", "ula", "--corrector-damping", "inf"], "--corrector-damping"),
    # sample: outputs
    (S + ["--out", "d.png"], "is a directory"),
    (S + ["--out", "f.txt/x.png"], "--out"),
    (S + ["--out", "x.jpg"], "--out"),
    (S + ["--out-dir", "f.txt"], "--out-dir"),
    (S + ["--out", "a.png", "--out-dir", "dir"], "--out-dir"),
    (S + ["--out", "a" * 100_000 + ".png"], "--out"),
    # sample: the expression
    (["sample", '"0.3,0.5" AND'], "at column 11"),
    (["sample", '"0.3,0.5":1e308'], "at column 11"),
    (["sample", '"0.3,0.5":nan'], "at column 11"),
    (["sample", 'NOT ("0.3,0.5" OR "0.7,0.5")'], "NOT of an expression with OR"),
    (["sample", '"0.3,0.5":-1 OR "0.7,0.5"'], "mixture weights"),
    # explain
    (E + ["a", "--guidance-scale", "nan"], "--guidance-scale"),
    (E + ["a", "--guidance-scale", "-inf"], "--guidance-scale"),
    (E + ["a", "--guidance-scale", "101"], "--guidance-scale"),
    (E + ["a", "--max-concepts", "0"], "--max-concepts"),
    (E + ["a", "--max-concepts", "1e9"], "--max-concepts"),
    (E + ["a", "--mode", "median"], "--mode"),
    (E + ['"a":1e308 OR "b":1e308'], "at column 5"),
    (E + ['"a":\x1b]0;pwned\x07'], "at column 5"),
    (E + ['"unterminated'], "at column 1"),
    (E + ["a\udcff"], "at column 2"),  # a byte that is not UTF-8, as Python decodes argv
    (E + ["a AND b AND c", "--max-concepts", "2"], "at column 13"),
    (E + [], "EXPR"),
    # world render
    (W + ["--n", "0"], "--n"),
    (W + ["--n", "5000"], "--n"),
    (W + ["--resolution", "4"], "--resolution"),
    (W + ["--resolution", "100000"], "--resolution"),
    (W + ["--scale", "-1"], "--scale"),
    (W + ["--scale", "33"], "--scale"),
    (W + ["--columns", "0"], "--columns"),
    (W + ["--seed", "-1"], "--seed"),
    (W + ["--seed", "nan"], "--seed"),
    (W + ["--n", "1024", "--resolution", "512"], "--n 1024"),  # n x resolution^2 capped
    (W + ["--n", "2", "--resolution", "128", "--scale", "32"], "--scale 32"),
    (W + ["--task", "faces"], "unknown task"),
    (["world", "render", "--out", "d.png"], "is a directory"),
    (["world", "render", "--out", "no/w.png"], "does not exist"),
    (["world", "render", "--out", "f.txt/w.png"], "--out"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_invocations_exit_2_with_a_complete_first_line(in_tmp, no_model, argv, needle):
    before = listing(in_tmp)
    rc, out, err = run_cli(argv)
    check_error(rc, out, err, needle)
    assert listing(in_tmp) == before
    assert not no_model  # refused before any model was opened


def test_at_least_20_bad_invocations_across_the_commands():
    commands = {argv[0] for argv, _ in BAD}
    assert len(BAD) >= 20 and commands == {"sample", "explain", "world"}


def test_control_characters_never_reach_the_terminal(in_tmp, no_model):
    hostile = "\x1b]0;pwned\x07\x1b[2J"
    for argv in (["explain", f'"a":{hostile}'], ["explain", f'"a{hostile}"'], ["explain", f"a{hostile}"],
                 ["sample", '"0.3,0.5"', "--out", f"{hostile}.jpg"], ["sample", '"0.3,0.5"', "--n", hostile],
                 ["world", "render", "--task", hostile, "--out", "w.png"]):
        rc, out, err = run_cli(argv)
        assert rc == 2 and not raw_controls(err) and not raw_controls(out), (argv, err)
        assert "\\x1b" in err  # shown escaped
    first = run_cli(["explain", f'"a":{hostile}'])[2].split("\n")
    assert first[0].endswith("control character \\x1b at column 5: concepts cannot hold control characters; "
                             "remove it")
    assert first[1] == '  "a":\\x1b]0;pwned\\x07\\x1b[2J' and first[2] == "      ^"  # caret under the escape


def test_a_megabyte_of_input_gives_a_bounded_error(in_tmp, no_model):
    big = "a " * 500_000 + "& b"
    rc, out, err = run_cli(["explain", big])
    check_error(rc, out, err, "character '&' in unquoted text at column 1000001")
    lines = err.split("\n")
    assert len(err) < 1000 and lines[1].startswith("  ...") and lines[1][lines[2].index("^")] == "&"
    rc, out, err = run_cli(["explain", '"a":' + "9" * 1_000_000])
    check_error(rc, out, err, "at column 5")
    assert len(err) < 1000
    rc, out, err = run_cli(["sample", '"' + "x" * 1_000_000])
    check_error(rc, out, err, "unterminated quote at column 1")


def test_the_caret_stays_under_the_bad_character_past_escapes_and_wide_characters():
    with pytest.raises(ParseError) as info:
        parse('"日本\x07" AND a & b')
    lines = str(info.value).split("\n")
    assert lines[0].startswith("control character \\x07 at column 4")
    assert lines[1] == '  "日本\\x07" AND a & b' and lines[2] == "  " + " " * 5 + "^"
    with pytest.raises(ParseError) as info:
        parse('"日本" AND a & b')
    lines = str(info.value).split("\n")
    assert lines[2].index("^") == 2 + 6 + len(" AND a ")  # 日本 take two columns each


def test_a_directory_as_out_fails_before_the_model_and_the_sampler(in_tmp, no_model, monkeypatch):
    import compdiff.sampling

    sampled = []
    monkeypatch.setattr(compdiff.sampling, "get_sampler", lambda name: sampled.append(name))
    for argv in (["sample", '"0.3,0.5"', "--out", "d.png"], ["sample", '"0.3,0.5"', "--out-dir", "f.txt"],
                 ["sample", '"0.3,0.5"', "--n", "1000", "--out", "big.png"]):
        rc, out, err = run_cli(argv)
        check_error(rc, out, err, "--out")
        assert out == "" and not no_model and not sampled
    assert "use --out-dir DIR" in err


# ---- explain: huge weights ------------------------------------------------------------
def test_explain_huge_weights_exit_2_and_print_nothing_else():
    for argv, needle in [(['"a":1e308 OR "b":1e308'], "out of range at column 5"),
                         (['"a":1e7'], "[-1e6, 1e6]"),
                         (["(" * 60 + '"a"' + ":1e6)" * 60], "non-finite"),
                         (["(" * 51 + '"a":10)' + ":1e6)" * 50 + ":1e6", "--guidance-scale", "100"], "overflows"),
                         (['"a" AND NOT ("b" OR "c")'], "NOT of an expression with OR")]:
        rc, out, err = run_cli(["explain", *argv])
        check_error(rc, out, err, needle)
        assert out == ""  # computed before printing: no partial output


def test_explain_large_but_allowed_weights_are_exact():
    rc, out, err = run_cli(["explain", '"a":1e6 OR "b":1e6 OR "c"'])
    assert rc == 0 and err == ""
    pis = [line for line in out.splitlines() if line.startswith("clause")]
    assert pis == ["clause 1 of 3, pi = 0.5:", "clause 2 of 3, pi = 0.5:", f"clause 3 of 3, pi = {1 / (2e6 + 1):.6g}:"]
    rc, out, _ = run_cli(["explain", "(" * 51 + '"a"' + ":1e6)" * 51, "--guidance-scale", "100"])
    assert rc == 0 and '"a"      1e+306     1e+308' in out


# ---- fuzz: any text gives exit 0, or exit 2 with a one-line-complete message -------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
hostile_chars = st.sampled_from(list('"\\:() \t\nANDORTa1.,-é日\u0301') + ["\x1b", "\x07", "\x00", "\x7f", "\x9b",
                                                                           "\udcff", "\u202e", "\u200b", "\r"])
tokens = st.sampled_from(["AND", "NOT", "OR", "(", ")", ":", '"', "\\", " ", "a", "red cube", ":1.5", ":-2",
                          ":1e6", ":-1e6", ":1e7", ":1e308", ":0", ":nan", ":inf", '"x"', "é", "\n", "\x1b",
                          "\x07", "&", "16:9", "1e999", "ANDROID", '"a":3', '"b":1e-300'])
BAD_SCALES = ("nan", "1e400")
options = st.sampled_from([[], ["--mode", "mean"], ["--guidance-scale", "100"], ["--guidance-scale", "nan"],
                           ["--guidance-scale", "-7.5"], ["--guidance-scale", "1e400"], ["--max-concepts", "3"]])


def check_explain(text: str, extra: list[str]) -> None:
    rc, out, err = run_cli(["explain", *extra, "--", text])
    assert rc in (0, 2), err
    assert not raw_controls(out) and not raw_controls(err)
    assert "Traceback" not in err and len(err) <= STDERR_BOUND
    if rc == 0:
        assert err == "" and out.startswith("expression: ")
        return
    assert out == ""  # nothing printed before an error
    first = err.split("\n", 1)[0]
    assert first.startswith("compdiff: error: ") and len(first) > 30
    if "--guidance-scale" in extra and extra[-1] in BAD_SCALES:
        assert "argument --guidance-scale: must be a finite number" in first
        return
    try:
        parse(text, max_concepts=int(extra[-1]) if "--max-concepts" in extra else 32)
    except ParseError:
        if text.strip():
            assert " at column " in first  # a parse error names the column on its first line
            assert err.rstrip("\n").split("\n")[-1].rstrip().endswith("^")


@FUZZ
@given(st.text(alphabet=st.one_of(hostile_chars, st.characters()), max_size=40), options)
def test_fuzz_any_text(text, extra):
    check_explain(text, extra)


@FUZZ
@given(st.lists(tokens, max_size=14).map(" ".join), options)
def test_fuzz_grammar_soup(text, extra):
    check_explain(text, extra)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["objects", "relations", "attributes"]),
       st.text(alphabet=st.one_of(hostile_chars, st.sampled_from(list("0.3,5() redcubleftofx")), st.characters()),
               max_size=200))
def test_fuzz_concept_errors(task_name, text):
    """A world task's concept error: three lines, the first complete (ends with the column), escaped, capped."""
    from compdiff.world import get_task

    try:
        get_task(task_name).parse(text)
    except ParseError as err:
        msg = str(err)
        lines = msg.split("\n")
        assert len(lines) == 3 and " at column " in lines[0] and "accepted: " in lines[0]
        assert lines[2].strip() == "^" and not raw_controls(msg) and len(msg) < 1500


# ---- sampling in batches ----------------------------------------------------------------
@pytest.fixture
def row_by_row(monkeypatch):
    """The model evaluated one row per call: every call has the same shape, so the numbers of a
    row cannot depend on how many rows share the call (BLAS and oneDNN pick kernels by shape)."""
    from compdiff.condition import cond_slice

    real = compdiff.backends.open_model

    def opened(*args, **kwargs):
        m = real(*args, **kwargs)
        den = m.denoiser

        def one_at_a_time(x, t, cond):
            return torch.cat([den(x[i:i + 1], t[i:i + 1], cond_slice(cond, i, i + 1)) for i in range(x.shape[0])])

        return replace(m, denoiser=one_at_a_time)

    monkeypatch.setattr(compdiff.backends, "open_model", opened)


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


OR_EXPR = '("0.3,0.5" OR "0.7,0.5":3) AND NOT "0.5,0.2"'


@pytest.mark.parametrize("expr", ['"0.3,0.5" AND NOT "0.5,0.2"', OR_EXPR])
def test_images_do_not_depend_on_the_batch_size(tiny_model, tmp_path, row_by_row, expr):
    got = {}
    for b in (3, 20):
        folder = tmp_path / f"b{b}"
        rc, out, err = run_cli(["sample", expr, "--model", tiny_model, "--n", "20", "--steps", "3", "--seed", "5",
                                "--batch-size", str(b), "--out-dir", str(folder), "--no-progress"])
        assert rc == 0, err
        assert f"20 images, {b} at a time" in out
        got[b] = pixels(folder)
    assert list(got[3]) == [f"{i:05d}_seed{5 + i}.png" for i in range(20)]
    for name in got[3]:
        np.testing.assert_array_equal(got[3][name], got[20][name], err_msg=name)  # pixel-identical
    assert len({a.tobytes() for a in got[3].values()}) == 20  # and the images differ from each other


def test_or_clauses_are_drawn_per_image_from_its_own_seed(tiny_model, tmp_path, row_by_row):
    """Image 7 of a run from seed 0 is image 0 of a run from seed 7, whatever the batch it falls in."""
    a, b = tmp_path / "a", tmp_path / "b"
    base = ["sample", OR_EXPR, "--model", tiny_model, "--steps", "2", "--no-progress"]
    assert run_cli(base + ["--n", "9", "--batch-size", "4", "--out-dir", str(a)])[0] == 0
    assert run_cli(base + ["--n", "1", "--seed", "7", "--out-dir", str(b)])[0] == 0
    np.testing.assert_array_equal(pixels(a)["00007_seed7.png"], pixels(b)["00000_seed7.png"])


def test_batched_model_calls_agree_to_rounding(tiny_model, tmp_path):
    """Without the one-row wrapper the model's kernels may round differently for other batch
    shapes: the images still agree to within a level or two of 255."""
    got = {}
    for b in (3, 20):
        folder = tmp_path / f"b{b}"
        assert run_cli(["sample", OR_EXPR, "--model", tiny_model, "--n", "20", "--steps", "3", "--batch-size", str(b),
                        "--out-dir", str(folder), "--no-progress"])[0] == 0
        got[b] = pixels(folder)
    diff = np.stack([np.abs(got[3][k].astype(int) - got[20][k].astype(int)) for k in got[3]])
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_the_grid_does_not_depend_on_the_batch_size(tiny_model, tmp_path, row_by_row):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path, b in zip(paths, ("2", "16")):
        assert run_cli(["sample", OR_EXPR, "--model", tiny_model, "--n", "5", "--steps", "2", "--batch-size", b,
                        "--out", str(path), "--no-progress"])[0] == 0
    np.testing.assert_array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(paths[1])))


def test_concept_errors_have_a_complete_first_line(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["sample", '"0.3,0.5" AND "1.5,0.5"', "--model", tiny_model, "--no-progress"])
    first = check_error(rc, out, err, "x = 1.5 is out of range [0, 1] in the concept '1.5,0.5' (accepted: ")
    assert first.endswith(" at column 1") and err.split("\n")[1:3] == ["  1.5,0.5", "  ^"]
    assert listing(tmp_path) == []


# ---- world render in chunks ----------------------------------------------------------------
def test_world_render_in_chunks_equals_one_chunk(tmp_path, monkeypatch):
    import compdiff.cli.world as world

    outs = []
    for chunk_pixels in (world.RENDER_CHUNK_PIXELS, 16 * 16):  # the second: one scene per chunk
        monkeypatch.setattr(world, "RENDER_CHUNK_PIXELS", chunk_pixels)
        out = tmp_path / f"{chunk_pixels}.png"
        assert run_cli(["world", "render", "--n", "5", "--resolution", "16", "--out", str(out)])[0] == 0
        outs.append((out.read_bytes(), out.with_suffix(".txt").read_text().split("\n", 1)[1]))
    assert outs[0] == outs[1]
