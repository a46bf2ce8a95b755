"""``compdiff score``: per-term lift table / JSON; bad images exit 2; every pipeline family scores."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import compdiff as cd
from compdiff.cli import main
from compdiff.world import to_uint8
from compdiff.world.dataset import WorldDataset

TIMES = "900,500,100"


def write_png(path, image):
    """image (3, H, W) in [-1, 1] -> PNG file."""
    u = to_uint8(image.unsqueeze(0))[0]
    arr = np.asarray(u) if u.shape[-1] == 3 else np.asarray(u.permute(1, 2, 0))
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Two objects-world renders as PNGs and, for each, a concept that holds in it."""
    folder = tmp_path_factory.mktemp("renders")
    ds = WorldDataset("objects", 32, seed=5)
    batch = ds.batch([0, 1]).image
    files = [write_png(folder / f"r{i}.png", batch[i]) for i in range(2)]
    truths = [ds.task.format(ds.task.true_concepts(ds.scene(i))[0]) for i in range(2)]
    return files, truths


def test_score_prints_a_table_of_each_terms_lift_and_whether_the_expression_holds(renders, capsys):
    files, truths = renders
    expr = f'"{truths[0]}" AND NOT "{truths[1]}"'
    assert main(["score", *files, expr, "--model", "objects", "--times", TIMES]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("expression: ")
    assert out[1].split()[:3] == ["image", f'"{truths[0]}"', f'"{truths[1]}"'] and out[1].split()[-1] == "holds"
    assert [line.split()[0] for line in out[2:4]] == files and out[2].split()[-1] in ("yes", "no")
    assert out[-1].endswith("; 18 model evaluations")  # 2 images x 3 conditions x 3 times


def test_score_json_agrees_with_compdiff_lift_and_the_keep_rule(renders, capsys):
    files, truths = renders
    expr = f'"{truths[0]}" AND NOT "{truths[1]}"'
    assert main(["score", *files, expr, "--model", "objects", "--times", TIMES, "--seed", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["concepts"] == truths and result["times"] == [900, 500, 100] and result["model_evals"] == 18
    model = cd.open_model("objects")
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
                          / 127.5 - 1 for f in files])
    direct = cd.lift(model, images, expr, times=[900, 500, 100], seed=3)
    for b, row in enumerate(result["images"]):
        assert row["file"] == files[b] and row["seed"] == 3 + b
        assert [row["lift"][c] for c in truths] == pytest.approx(direct.scores[b].tolist(), rel=1e-9, abs=1e-9)
        a, n = row["lift"][truths[0]], row["lift"][truths[1]]
        assert row["holds"] == (a > 0 and n < 0) and row["margin"] == pytest.approx(min(a, -n))
        assert row["stderr"] == {c: None for c in truths}  # one draw: no error estimate


def test_image_order_and_batch_size_do_not_change_the_scores(renders, capsys):
    files, truths = renders
    expr = f'"{truths[0]}"'
    assert main(["score", *files, expr, "--model", "objects", "--times", TIMES, "--json"]) == 0
    both = json.loads(capsys.readouterr().out)["images"]
    assert main(["score", files[1], expr, "--model", "objects", "--times", TIMES, "--json", "--seed", "1"]) == 0
    alone = json.loads(capsys.readouterr().out)["images"][0]
    assert alone["lift"] == pytest.approx(both[1]["lift"], rel=1e-4)  # float32 convolutions of other batch sizes


def test_bad_images_exit_2_naming_the_file(renders, tmp_path, capsys):
    files, truths = renders
    (tmp_path / "junk.png").write_text("not an image")
    Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    cases = [(str(tmp_path / "junk.png"), "cannot be read"), (str(tmp_path / "small.png"), "16x16 pixels"),
             (str(tmp_path / "missing.png"), "cannot be read"), (str(tmp_path), "cannot be read")]
    for path, what in cases:
        assert main(["score", files[0], path, f'"{truths[0]}"', "--model", "objects"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("compdiff: error: ") and path in err and what in err, err


@pytest.mark.parametrize("argv", [["a AND"], ['"0.5,0.5"', "--times", "x"], ['"0.5,0.5"', "--times", "1000"],
                                  ['"0.5,0.5"', "--draws", "0"], ['"not a position"'], ['NOT ("a" OR "b")']])
def test_bad_expressions_and_options_exit_2(renders, argv, capsys):
    files, _ = renders
    assert main(["score", files[0], *argv, "--model", "objects"]) == 2
    assert capsys.readouterr().err.startswith("compdiff: error:")


def _tiny(family, folder):
    if family == "stable-diffusion":
        import sd_tiny
        sd_tiny.save_pipeline(folder)
    elif family == "sdxl":
        import sdxl_tiny
        sdxl_tiny.save_pipeline(folder)
    elif family in ("sd3", "flux"):
        import flow_tiny
        (flow_tiny.save_sd3 if family == "sd3" else flow_tiny.save_flux)(folder)
    else:
        import pixart_tiny
        pixart_tiny.save_pixart(folder)
    return str(folder)


@pytest.mark.parametrize("family", ["stable-diffusion", "sdxl", "sd3", "flux", "pixart"])
def test_every_pipeline_family_scores(family, tmp_path, capsys, no_network):
    """Images are encoded by the pipeline's VAE, then scored on the default grid (10 times)."""
    folder = _tiny(family, tmp_path / "pipe")
    model = cd.open_model(folder)
    assert model.family == family
    image = model.decode(torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(0)))[0]
    png = write_png(tmp_path / "x.png", image)
    assert main(["score", png, png, '"a red cat" AND NOT "a dog"', "--model", folder, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == family and result["concepts"] == ["a red cat", "a dog"]
    assert len(result["times"]) == 10 and result["model_evals"] == 2 * 3 * 10
    first, second = (row["lift"] for row in result["images"])
    assert all(np.isfinite(v) for v in first.values()) and first != second  # seeds 0 and 1: other noises
    if family in ("sd3", "flux"):
        assert all(0 < t < 1 for t in result["times"])
    Image.new("RGB", (image.shape[-1] + 2, image.shape[-2])).save(tmp_path / "odd.png")
    assert main(["score", str(tmp_path / "odd.png"), '"a"', "--model", folder]) == 2
    assert "multiples of" in capsys.readouterr().err
