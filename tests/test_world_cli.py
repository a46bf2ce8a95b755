"""compdiff world render: writes a labelled grid + .txt; bad input exits 2, no file."""
import pytest
from PIL import Image

from compdiff.cli import main


def test_render_writes_png_txt_and_json(tmp_path, capsys):
    out = tmp_path / "w.png"
    assert main(["world", "render", "--task", "relations", "--n", "3", "--resolution", "16",
                 "--seed", "2", "--out", str(out)]) == 0
    im = Image.open(out)
    assert im.width >= 3 * 16 * 8 and im.height > 16 * 8
    txt = (tmp_path / "w.txt").read_text()
    assert "[2] true: a " in txt and "[0] objects:" in txt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.png", "w.txt"]


@pytest.mark.parametrize("args,needle", [
    (["--task", "faces"], "unknown task"), (["--n", "0"], "--n"),
    (["--resolution", "4"], "--resolution"), (["--seed", "-1"], "--seed")])
def test_bad_args_exit_2_without_files(tmp_path, capsys, args, needle):
    out = tmp_path / "w.png"
    assert main(["world", "render", *args, "--out", str(out)]) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_out_path(tmp_path, capsys):
    assert main(["world", "render", "--out", str(tmp_path / "w.jpg")]) == 2
    assert main(["world", "render", "--out", str(tmp_path / "no" / "w.png")]) == 2
    assert main(["world"]) == 2
    assert list(tmp_path.iterdir()) == []
