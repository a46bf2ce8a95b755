"""Training knobs for the relations ablation: v-prediction, min-SNR weighting, attention at more levels."""
import json

import pytest
import torch

from compdiff.cli import main
from compdiff.models import InferenceDenoiser, load_model
from compdiff.nn import ConditionalUNet, ModelConfig
from compdiff.schedule import make_schedule
from compdiff.training.loss import DiffusionLoss
from compdiff.world import get_task

SCHED = make_schedule({"kind": "cosine", "T": 1000})
REL = get_task("relations").condition_spec()


def _batch(seed=0, B=6):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(B, 3, 8, 8, generator=g), torch.randn(B, 3, 8, 8, generator=g)
    t = torch.tensor([0, 5, 60, 300, 700, 999])[:B]
    return x0, eps, t


def test_min_snr_weights_are_the_clipped_snr_in_each_parametrisation():
    _, _, t = _batch()
    a, s = SCHED.alpha_sigma(t)
    snr = (a / s) ** 2
    w_eps = DiffusionLoss(SCHED, "epsilon", "min-snr").weights(t).double()
    w_v = DiffusionLoss(SCHED, "v_prediction", "min-snr").weights(t).double()
    assert torch.allclose(w_eps, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr, rtol=1e-6)
    assert torch.allclose(w_v, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1), rtol=1e-6)
    # eps: clean levels (SNR > 5) count less, noisy ones fully; v: weight below 1 everywhere
    assert (w_eps[snr > 5] < 1).all() and torch.equal(w_eps[snr <= 5], torch.ones_like(w_eps[snr <= 5]))
    assert (w_v < 1).all()
    assert torch.equal(DiffusionLoss(SCHED).weights(t), torch.ones(len(t)))


def test_the_weighted_loss_is_the_weighted_mean_of_per_sample_errors():
    x0, eps, t = _batch()
    net = lambda x, tt, c: 0.5 * x  # noqa: E731  any fixed function of x_t
    for pred in ("epsilon", "v_prediction"):
        x_t = SCHED.add_noise(x0, eps, t)
        target = SCHED.prediction_from(x0, eps, t, x_t, pred)
        per = ((0.5 * x_t - target) ** 2).flatten(1).mean(1)
        plain = DiffusionLoss(SCHED, pred)(net, x0, t, None, eps)
        assert torch.allclose(plain, per.mean(), rtol=1e-5)
        w = DiffusionLoss(SCHED, pred, "min-snr").weights(t)
        assert torch.allclose(DiffusionLoss(SCHED, pred, "min-snr")(net, x0, t, None, eps), (w * per).mean(),
                              rtol=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        DiffusionLoss(SCHED, "epsilon", "snr")


def test_v_target_is_alpha_eps_minus_sigma_x0():
    x0, eps, t = _batch()
    x_t = SCHED.add_noise(x0, eps, t)
    a, s = SCHED.alpha_sigma(t, x0)
    assert torch.allclose(SCHED.prediction_from(x0, eps, t, x_t, "v_prediction"), a * eps - s * x0, atol=1e-6)


class PerfectV(torch.nn.Module):
    """Outputs the true v of a known (x0, eps): the sampler must get back exactly that eps."""

    def __init__(self, x0, eps):
        super().__init__()
        self.cfg = ModelConfig(task="relations", prediction="v_prediction", cross_attention=True, **REL)
        self.x0, self.eps = x0, eps

    def forward(self, x, t, cond):
        a, s = SCHED.alpha_sigma(t, x)
        return a * self.eps - s * self.x0


def test_a_v_network_gives_samplers_eps():
    x0, eps, t = _batch()
    x_t = SCHED.add_noise(x0, eps, t)
    den = InferenceDenoiser(PerfectV(x0, eps), schedule=SCHED)
    assert torch.allclose(den(x_t, t, None), eps, atol=1e-4)
    with pytest.raises(ValueError, match="schedule"):
        InferenceDenoiser(PerfectV(x0, eps))


def test_attention_at_two_levels():
    cfg = ModelConfig(task="relations", resolution=16, channels=(16, 32, 32), layers_per_block=1,
                      cross_attention=True, attention_levels=2, **REL)
    net = ConditionalUNet(cfg).eval()
    assert list(net.unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert list(net.unet.config.up_block_types) == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    cond = torch.zeros(2, 9, dtype=torch.long)
    cond[:, 0] = 1
    with torch.no_grad():
        assert net(torch.randn(2, 3, 16, 16), torch.tensor([1, 500]), cond).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="attention_levels"):
        ModelConfig(task="relations", channels=(16, 32), cross_attention=True, attention_levels=3, **REL)
    with pytest.raises(ValueError, match="needs cross_attention"):
        ModelConfig(task="relations", attention_levels=2, **REL)
    with pytest.raises(ValueError, match="prediction"):
        ModelConfig(task="relations", prediction="velocity", **REL)


TINY = ["--task", "relations", "--resolution", "16", "--channels", "16,32", "--layers-per-block", "1",
        "--batch-size", "2", "--precision", "fp32", "--steps", "2", "--warmup", "1", "--no-progress"]


def test_train_with_every_knob_and_sample(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--cross-attention", "--attention-levels", "2", "--prediction", "v",
                 "--loss-weighting", "min-snr", "--omit-prob", "0", "--out", str(out)]) == 0
    meta = json.loads((out / "model" / "compdiff.json").read_text())
    assert meta["model"]["prediction"] == "v_prediction" and meta["model"]["attention_levels"] == 2
    assert meta["training"]["loss_weighting"] == "min-snr" and meta["training"]["omit_prob"] == 0.0
    m = load_model(out / "model")
    assert m.denoiser.prediction == "v_prediction"
    img = tmp_path / "s.png"
    assert main(["sample", "--model", str(out / "model"), '"a red cube left of a blue sphere"', "--n", "1",
                 "--steps", "2", "--out", str(img)]) == 0
    assert img.stat().st_size > 0


def test_joint_train_with_words_left_out_records_it(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--cross-attention", "--joint", "--joint-subsets", "--omit-prob", "0.3",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "model" / "compdiff.json").read_text())
    assert meta["model"]["joint"] is True and meta["training"]["omit_prob"] == 0.3


@pytest.mark.parametrize("extra, needle", [
    (["--attention-levels", "2"], "--attention-levels applies to --cross-attention"),
    (["--cross-attention", "--attention-levels", "3"], "--attention-levels must be 1..2"),
    (["--prediction", "x0"], "--prediction"),
    (["--loss-weighting", "p2"], "--loss-weighting"),
    (["--token-sink"], "--token-sink applies to --cross-attention"),
    (["--omit-prob", "1"], "--omit-prob"),
    (["--omit-prob", "0", "--task", "objects"], "--omit-prob: it applies to tasks whose labels leave out words"),
])
def test_bad_knobs_exit_2_and_write_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    assert main(["train", *TINY, *extra, "--out", str(out)]) == 2
    assert needle in capsys.readouterr().err and not out.exists()


def test_pixel_coords_say_where_each_pixel_is():
    from compdiff.nn.conditioning import COORD_FREQS, coord_channels, n_coord_channels

    g = coord_channels(8)
    assert g.shape == (1, n_coord_channels(), 8, 8) == (1, 2 + 4 * len(COORD_FREQS), 8, 8)
    # channel 0 is x (across, the column), channel 1 is y (down, the row), at pixel centres in [0, 1]
    assert torch.allclose(g[0, 0, 3], (torch.arange(8) + 0.5) / 8) and torch.allclose(g[0, 1, :, 5], (torch.arange(8) + 0.5) / 8)
    assert torch.allclose(g[0, 2, 0, 2], torch.sin(torch.tensor(2.5 / 8 * torch.pi)))  # sin(pi x) at column 2
    # every pixel has its own code: no two positions collide
    codes = g[0].flatten(1).T
    assert torch.cdist(codes, codes).add(torch.eye(64) * 10).min() > 0.05


def test_pixel_coords_reach_the_network_and_the_saved_model(tmp_path):
    spec = get_task("objects").condition_spec()
    cfg = ModelConfig(task="objects", resolution=16, channels=(16, 32), layers_per_block=1, spatial=False,
                      cross_attention=True, pixel_coords=True, **spec)
    net = ConditionalUNet(cfg).eval()
    assert net.unet.config.in_channels == 3 + 18 and cfg.in_channels == 21
    assert ConditionalUNet(ModelConfig(task="objects", resolution=16, channels=(16, 32), **spec)).unet.config.in_channels == 4
    # the same image and condition, different position token: the coordinates let the output depend on it
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        y = net(x, t, torch.tensor([[0.2, 0.3, 1.0]]))
    assert y.shape == (1, 3, 16, 16)
    out = tmp_path / "run"
    assert main(["train", "--task", "objects", "--resolution", "16", "--channels", "16,32", "--layers-per-block", "1",
                 "--batch-size", "2", "--precision", "fp32", "--steps", "2", "--warmup", "1", "--no-progress",
                 "--no-spatial", "--cross-attention", "--pixel-coords", "--out", str(out)]) == 0
    meta = json.loads((out / "model" / "compdiff.json").read_text())
    assert meta["model"]["pixel_coords"] is True
    m = load_model(out / "model")
    assert m.denoiser.net.cfg.pixel_coords and m.denoiser.net.unet.config.in_channels == 21
    img = tmp_path / "s.png"
    assert main(["sample", "--model", str(out / "model"), "0.3,0.6", "--n", "1", "--steps", "2",
                 "--out", str(img)]) == 0


def test_one_token_alone_is_the_same_everywhere_and_the_sink_lets_it_vary():
    """Why --token-sink exists: softmax over a single key weighs it 1 at every query, so a cross-attention
    layer reading one token adds the same vector at every place; with a sink token it need not."""
    spec = get_task("objects").condition_spec()
    cfg = ModelConfig(task="objects", resolution=16, channels=(16, 32), layers_per_block=1, spatial=False,
                      cross_attention=True, **spec)
    attn = ConditionalUNet(cfg).unet.mid_block.attentions[0].transformer_blocks[0].attn2
    torch.manual_seed(0)
    places = torch.randn(1, 64, 32)  # 64 places of an image, all different
    token = torch.randn(1, 1, 32)
    with torch.no_grad():
        alone = attn(places, encoder_hidden_states=token)
        with_sink = attn(places, encoder_hidden_states=torch.cat([torch.randn(1, 1, 32), token], dim=1))
    assert torch.allclose(alone, alone[:, :1].expand_as(alone), atol=1e-6)
    assert (with_sink - with_sink[:, :1]).abs().amax() > 1e-3


def test_the_sink_comes_first_is_never_masked_and_is_saved(tmp_path):
    from compdiff.nn.conditioning import WithSink, build_token_sequence

    one = build_token_sequence(32, (), kind="position", sink=True)
    assert isinstance(one, WithSink)
    tok = one(torch.tensor([[0.2, 0.3, 1.0], [0.7, 0.1, 1.0]]))
    assert tok.shape == (2, 2, 32) and torch.equal(tok[0, 0], tok[1, 0]) and torch.equal(tok[0, 0], one.sink[0, 0])
    joint = build_token_sequence(32, (), joint=True, kind="position", sink=True)
    tok, mask = joint(torch.tensor([[[0.2, 0.3, 1.0], [0.0, 0.0, 0.0]]]))  # one real row, one null row
    assert tok.shape == (1, 3, 32) and mask.tolist() == [[True, True, False]]
    out = tmp_path / "run"
    assert main(["train", "--task", "objects", "--resolution", "16", "--channels", "16,32", "--layers-per-block", "1",
                 "--batch-size", "2", "--precision", "fp32", "--steps", "2", "--warmup", "1", "--no-progress",
                 "--no-spatial", "--cross-attention", "--pixel-coords", "--token-sink", "--out", str(out)]) == 0
    assert json.loads((out / "model" / "compdiff.json").read_text())["model"]["token_sink"] is True
    m = load_model(out / "model")
    assert isinstance(m.denoiser.net.cond_tokens, WithSink)
    from safetensors.torch import load_file
    saved = load_file(str(out / "model" / "cond_tokens.safetensors"))
    assert torch.equal(saved["sink"], m.denoiser.net.cond_tokens.sink.detach())  # in the file, and loaded from it


def _attribute_words(rows):
    """(N, 9) relations rows -> (N, 8) bool: which attribute words the label gives (0 = left out)."""
    return torch.cat([rows[:, :4], rows[:, 5:]], 1) != 0


@pytest.mark.parametrize("scenes", ["python", "torch"])
def test_omit_prob_zero_gives_complete_descriptions_on_both_paths(scenes):
    from compdiff.world import WorldDataset

    def labels(**kw):
        data = WorldDataset("relations", 16, seed=3, null_prob=0.0, length=10**4, **kw)
        if scenes == "python":
            return data.batch(range(200)).cond
        return data.device_batch(torch.Generator().manual_seed(3), 200, "cpu").cond

    default, complete = _attribute_words(labels()), _attribute_words(labels(omit_prob=0.0))
    assert complete.all()  # every word of both objects, as a joint label lists them
    assert 0.6 < default.float().mean() < 0.8  # the task's own 0.3 leaves out about 30% of the words
    assert get_task("relations").omit_prob == 0.3  # the registered task is untouched
    half = _attribute_words(labels(omit_prob=0.5)).float().mean()
    assert 0.4 < half < 0.6


def test_omit_prob_refuses_tasks_without_words_and_bad_chances():
    from compdiff.errors import InputError
    from compdiff.world import WorldDataset

    with pytest.raises(InputError, match="not objects"):
        WorldDataset("objects", 16, seed=0, omit_prob=0.0)
    with pytest.raises(InputError, match="not objects"):
        WorldDataset("objects", 16, seed=0, joint=True, omit_prob=0.3)
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        WorldDataset("relations", 16, seed=0, omit_prob=1.0)


@pytest.mark.parametrize("task", ["relations", "described"])
def test_joint_labels_leave_out_words_only_when_asked(task):
    from compdiff.world import WorldDataset

    kw = dict(seed=4, length=10**4, joint=True, joint_subsets=True, max_objects=3)
    whole, same, half = (WorldDataset(task, 16, **kw), WorldDataset(task, 16, **kw),
                         WorldDataset(task, 16, omit_prob=0.5, **kw))
    words = [0, 1, 2, 3, 5, 6, 7, 8] if task == "relations" else [0, 1, 2, 3]
    n_whole = n_half = 0
    for i in range(150):
        (cw, mw), (ch, mh) = whole._label(i, whole.scene(i)), half._label(i, half.scene(i))
        assert torch.equal(cw, same._label(i, same.scene(i))[0])  # deterministic per index
        assert torch.equal(mw, mh)  # the same subset, the same size
        assert (cw[mw][:, words] != 0).all()  # without omit_prob a joint label is whole
        # each concept is the whole one with some words left out (0 = any), never another value
        kept = ch[mh][:, words]
        assert ((kept == 0) | (kept == cw[mw][:, words])).all()
        if task == "relations":
            assert torch.equal(ch[mh][:, 4], cw[mw][:, 4])  # the relation word is never left out
        scene = half.scene(i)
        assert all(half.task.holds(c, scene) for c in half.task.from_tensor(ch[mh]))  # still true
        n_whole += kept.numel()
        n_half += int((kept == 0).sum())
    frac = n_half / n_whole
    lo, hi = (0.4, 0.6) if task == "relations" else (0.42, 0.6)  # described redraws an all-omitted draw
    assert lo < frac < hi, frac
