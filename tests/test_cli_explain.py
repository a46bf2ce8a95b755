"""``compdiff explain``: tree, terms and effective weights; errors exit 2."""
import pytest

from compdiff.cli import main

EXAMPLE = '"a red cube" AND "a blue sphere":1.5 AND NOT "metal"'


def rows(out: str) -> dict[str, tuple[str, str]]:
    """concept -> (weight, effective) from the terms table."""
    table = out.split("terms (", 1)[1].splitlines()[2:]
    found = {}
    for line in table:
        if not line.startswith("  "):
            break
        concept, weight, effective = line.strip().rsplit(None, 2)
        found[concept] = (weight, effective)
    return found


def test_explain_sum(capsys):
    assert main(["explain", EXAMPLE, "--guidance-scale", "3"]) == 0
    out = capsys.readouterr().out
    assert "expression: " + EXAMPLE in out
    assert '    "a blue sphere" (weight 1.5)' in out  # the pretty tree
    assert rows(out) == {
        '"a red cube"': ("1.0", "3.0"),
        '"a blue sphere"': ("1.5", "4.5"),
        '"metal"': ("-1.0", "-3.0"),
    }


def test_explain_default_scale_is_one_and_merges(capsys):
    assert main(["explain", 'a AND b AND NOT "a":0.5']) == 0
    out = capsys.readouterr().out
    assert rows(out) == {'"a"': ("0.5", "0.5"), '"b"': ("1.0", "1.0")}
    assert "merged" in out


def test_explain_mean_divides_by_positive_terms(capsys):
    assert main(["explain", "a AND b AND NOT c", "--mode", "mean", "--guidance-scale", "7.5"]) == 0
    out = capsys.readouterr().out
    assert rows(out) == {'"a"': ("1.0", "3.75"), '"b"': ("1.0", "3.75"), '"c"': ("-1.0", "-3.75")}
    assert "P = 2" in out


def test_explain_parse_error_exits_2(capsys):
    assert main(["explain", "a photo 16:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compdiff: error:")
    assert '"a photo 16:9"' in err and "^" in err


def test_explain_or_prints_the_clauses_with_their_mixture_weights(capsys):
    assert main(["explain", '"a":3 OR ("b" AND NOT "c")', "--guidance-scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "OR\n" in out and "clause 1 of 2, pi = 0.75:" in out and "clause 2 of 2, pi = 0.25:" in out
    assert '"c"        -1.0       -2.0' in out
    assert "pi ignores" not in out  # a top-level OR is an exact mixture
    assert main(["explain", '"x" AND ("a" OR "b")']) == 0
    assert "pi ignores the clauses' normalising constants" in capsys.readouterr().out


def test_explain_not_of_or_exits_2(capsys):
    assert main(["explain", 'NOT ("a" OR "b")']) == 2
    assert capsys.readouterr().err.startswith("compdiff: error:")


@pytest.mark.parametrize("argv", [["--guidance-scale", "nan"], ["--max-concepts", "0"]])
def test_explain_bad_options_exit_2(capsys, argv):
    assert main(["explain", "a", *argv]) == 2
    assert capsys.readouterr().err.startswith("compdiff: error:")


def test_explain_max_concepts(capsys):
    assert main(["explain", "a AND b AND c", "--max-concepts", "2"]) == 2
    assert "max_concepts" in capsys.readouterr().err
    assert main(["explain", "a AND b AND c", "--max-concepts", "3"]) == 0


def test_explain_help_names_both_rules(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help wraps to the terminal
    assert "sum" in out and "mean" in out and "default: 1.0" in out
    assert "eps(null) + sum_i w_i * s * (eps(c_i) - eps(null))" in out
    assert "example" in out


def test_explain_help_describes_or(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "OR is a mixture" in out and "probability pi" in out
    assert "cannot be composed" not in out and "not supported" not in out


def test_explain_max_concepts_hint_names_explain(capsys):
    assert main(["explain", "a AND b AND c", "--max-concepts", "2"]) == 2
    err = capsys.readouterr().err
    assert "at most 2 concepts" in err
    assert "--max-concepts N to 'compdiff explain'" in err
    assert "on the command line" not in err
