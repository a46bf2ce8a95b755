"""The cross-attention condition path (token tasks): token sequences, the joint mask, model files."""
import json

import pytest
import torch

from compdiff.cli import main
from compdiff.models import load_model, save_model
from compdiff.nn import ConditionalUNet, ModelConfig
from compdiff.nn.conditioning import PositionTokens, SetSequence, TokenSequence
from compdiff.training import TrainConfig, train
from compdiff.world import get_task

GROUPS = get_task("relations").condition_spec()["token_groups"]
VOCAB = get_task("relations").condition_spec()["vocab_sizes"]
REL = get_task("relations")


def _rows(*texts):
    return REL.to_tensor([REL.parse(t) for t in texts])


def test_relation_tokens_are_first_object_relation_second_object():
    seq = TokenSequence(VOCAB, 16, GROUPS)
    a, b = _rows("a small red metal cube left of a large blue rubber sphere",
                 "a small green metal cube left of a large blue rubber sphere")
    ta, tb = seq(torch.stack([a, b]))
    assert ta.shape == (3, 16)
    # the first object's colour moves the first token only
    assert not torch.allclose(ta[0], tb[0])
    assert torch.equal(ta[1:], tb[1:])
    # a relation word moves the middle token only
    c = seq(_rows("a small red metal cube right of a large blue rubber sphere"))[0]
    assert torch.equal(c[[0, 2]], ta[[0, 2]]) and not torch.allclose(c[1], ta[1])


def test_null_row_gives_the_learned_null_tokens():
    seq = TokenSequence(VOCAB, 8, GROUPS)
    out = seq(torch.zeros(2, 9, dtype=torch.long))
    assert torch.equal(out, seq.null.expand(2, -1, -1))
    # "thing left of thing" (no attribute words) is not the null row
    assert not torch.allclose(seq(_rows("thing left of thing"))[0], seq.null)


def test_groups_must_cover_every_slot_once():
    with pytest.raises(ValueError, match="cover the 9 slots"):
        TokenSequence(VOCAB, 8, ((0, 1, 2, 3), (4,), (5, 6, 7)))
    assert TokenSequence((3, 4), 8).n_tokens == 2  # no groups: one token per slot


def test_set_mask_marks_the_real_rows_and_keeps_one_null_for_an_empty_set():
    seq = SetSequence(TokenSequence(VOCAB, 8, GROUPS))
    r = _rows("a red cube left of a blue sphere")[0]
    cond = torch.zeros(2, 3, 9, dtype=torch.long)
    cond[0, 1] = r  # one real row in the middle; set 1 is empty
    tokens, mask = seq(cond)
    assert tokens.shape == (2, 9, 8)
    assert mask.tolist() == [[False] * 3 + [True] * 3 + [False] * 3, [True] * 3 + [False] * 6]


def _net(joint=False):
    torch.manual_seed(0)
    cfg = ModelConfig(task="relations", resolution=16, channels=(16, 32), layers_per_block=1,
                      cross_attention=True, joint=joint, **get_task("relations").condition_spec())
    return ConditionalUNet(cfg).eval()


def test_joint_model_ignores_null_padding():
    """Masked cross-attention and the masked sum: padding a set with more null rows changes nothing."""
    net = _net(joint=True)
    rows = _rows("a red cube left of a blue sphere", "a large thing behind a small cylinder")
    short = torch.zeros(1, 3, 9, dtype=torch.long)
    long = torch.zeros(1, 7, 9, dtype=torch.long)
    short[0, :2] = long[0, :2] = rows
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([400])
    with torch.no_grad():
        a, b = net(x, t, short), net(x, t, long)
        swapped = net(x, t, short[:, [1, 0, 2]])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, swapped, atol=1e-5)  # a set: order-free


def test_the_model_reads_the_tokens():
    """With the global embedding made blind, the output still follows the description."""
    net = _net()
    with torch.no_grad():
        for table in net.cond_embed.tables:
            table.weight.zero_()
        x, t = torch.randn(1, 3, 16, 16).repeat(2, 1, 1, 1), torch.tensor([400, 400])
        out = net(x, t, _rows("a red cube left of a blue sphere", "a green cube left of a blue sphere"))
        torch.nn.init.zeros_(net.cond_tokens.tables[1].weight)  # the first object's colour table
        blind = net(x, t, _rows("a red cube left of a blue sphere", "a green cube left of a blue sphere"))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.allclose(blind[0], blind[1], atol=1e-6)


@pytest.mark.parametrize("joint", [False, True])
def test_save_and_load_round_trip(tmp_path, joint):
    net = _net(joint)
    save_model(net, tmp_path / "m", {"kind": "cosine", "T": 1000}, {"kmax": 4})
    assert (tmp_path / "m" / "cond_tokens.safetensors").is_file()
    loaded = load_model(tmp_path / "m")
    assert loaded.config.cross_attention and loaded.config.token_groups == GROUPS
    cond = torch.zeros(2, 4, 9, dtype=torch.long) if joint else torch.zeros(2, 9, dtype=torch.long)
    cond[..., 0, :] = _rows("a red cube left of a blue sphere")[0]
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), loaded.denoiser.net(x, t, cond))


def _objects_net(joint=False, spatial=False):
    torch.manual_seed(0)
    cfg = ModelConfig(task="objects", resolution=16, channels=(16, 32), layers_per_block=1, spatial=spatial,
                      cross_attention=True, joint=joint, **get_task("objects").condition_spec())
    return ConditionalUNet(cfg).eval()


def test_a_position_is_one_token_and_the_null_row_the_null_token():
    seq = PositionTokens(8)
    out = seq(torch.tensor([[0.3, 0.7, 1.0], [0.0, 0.0, 0.0], [0.7, 0.3, 1.0]]))
    assert out.shape == (3, 1, 8)
    assert torch.equal(out[1], seq.null)
    assert not torch.allclose(out[0], out[2])  # the token follows the position
    tokens, mask = SetSequence(seq)(torch.tensor([[[0.3, 0.7, 1.0], [0.0, 0.0, 0.0]]]))
    assert tokens.shape == (1, 2, 8) and mask.tolist() == [[True, False]]


def test_objects_without_the_bump_read_positions_through_tokens_only():
    """--no-spatial --cross-attention: no input channel carries the layout; blind the global
    embedding and the output still follows the position, through the token; blind the token too
    and it no longer does."""
    net = _objects_net()
    assert net.unet.config.in_channels == 3
    rows = torch.tensor([[0.3, 0.3, 1.0], [0.7, 0.7, 1.0]])
    x, t = torch.randn(1, 3, 16, 16).repeat(2, 1, 1, 1), torch.tensor([400, 400])
    with torch.no_grad():
        for p in net.cond_embed.mlp.parameters():
            p.zero_()
        out = net(x, t, rows)
        for p in net.cond_tokens.mlp.parameters():
            p.zero_()
        blind = net(x, t, rows)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.allclose(blind[0], blind[1], atol=1e-6)
    assert _objects_net(spatial=True).unet.config.in_channels == 4  # the bump channel as well


def test_objects_joint_tokens_are_a_set(tmp_path):
    """The joint objects baseline reads its set as tokens: order-free, null padding changes nothing,
    and the model files round-trip."""
    net = _objects_net(joint=True)
    rows = torch.tensor([[0.3, 0.3, 1.0], [0.7, 0.6, 1.0]])
    short, long = torch.zeros(1, 3, 3), torch.zeros(1, 5, 3)
    short[0, :2] = long[0, :2] = rows
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([400])
    with torch.no_grad():
        a, b, swapped = net(x, t, short), net(x, t, long), net(x, t, short[:, [1, 0, 2]])
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, swapped, atol=1e-5)
    save_model(net, tmp_path / "m", {"kind": "cosine", "T": 1000}, {"kmax": 5})
    with torch.no_grad():
        # the same weights (float rounding differs between the two modules' kernels by ~1e-6)
        assert torch.allclose(net(x, t, short), load_model(tmp_path / "m").denoiser.net(x, t, short), atol=1e-5)


def test_objects_trains_with_cross_attention(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task", "objects", "--cross-attention", "--no-spatial", "--steps", "1",
                 "--batch-size", "2", "--resolution", "16", "--channels", "16,32", "--layers-per-block", "1",
                 "--precision", "fp32", "--out", str(out), "--no-progress"]) == 0
    assert load_model(out / "model").config.cross_attention


def test_a_run_from_before_a_new_setting_still_resumes(tmp_path):
    tiny = dict(task="relations", resolution=16, batch_size=2, channels=(16, 32), layers_per_block=1,
                precision="fp32", warmup=1, log_every=1)
    train(TrainConfig(out=str(tmp_path / "r"), steps=1, **tiny), progress=False)
    run = tmp_path / "r" / "run.json"
    old = json.loads(run.read_text())
    del old["cross_attention"]  # as written before the setting existed
    run.write_text(json.dumps(old))
    assert train(TrainConfig(out=str(tmp_path / "r"), steps=2, **tiny), resume=True, progress=False).steps_done == 2
