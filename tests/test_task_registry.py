"""The Task base class declares every hook; one registry; the hooks reproduce the old behaviour.

The literals below were recorded from the code before the hooks existed (concept_sets with
its MAX_K dict and name checks, judge_accuracy.false_concept's isinstance chain, cli/world's
relations special case), so any change to what the evaluation draws shows up here. The concept
set digests were recorded again for sets version 2 (2026-12-01: the concepts of a set are chosen
with a stream of their own, no longer the scene's; see world/concept_sets.py).
"""
import hashlib

import numpy as np
import pytest

from compdiff.cli import main
from compdiff.errors import InputError
from compdiff.world.concept_sets import concept_sets
from compdiff.eval.judge_accuracy import false_concept
from compdiff.nn.conditioning import build_embedding, build_token_sequence
from compdiff.world import Obj, Scene
from compdiff.world.tasks import (TASKS, Attribute, AttributesTask, Position, Task, get_task,
                                  register_task, task_help, task_names, unregister_task)

#: the tasks that existed before the hooks: the literal tables below record their old behaviour
RECORDED = ("objects", "relations", "attributes")
REQUIRED = {"name", "help", "max_k", "parse", "format", "holds", "true_concepts", "sample_concept",
            "max_true", "false_concept", "condition_spec", "concept_row", "row_concept"}


def scenes(task: Task, n: int = 6) -> list[Scene]:
    return [task.scene(11, i) for i in range(n)]


# ---- every registered task implements every hook ---------------------------------
def test_the_base_class_declares_the_required_hooks():
    assert Task.__abstractmethods__ == REQUIRED


@pytest.mark.parametrize("name", task_names())
def test_every_hook_runs_on_real_scenes(name):
    task = get_task(name)
    assert task.name == name and isinstance(task.max_k, int) and task.max_k >= 1
    assert task.help.strip() and "\n" not in task.help
    spec = task.condition_spec()
    embed = build_embedding(spec["cond_kind"], 8, spec["vocab_sizes"])
    rng = np.random.default_rng(0)
    for scene in scenes(task):
        true = task.true_concepts(scene)
        assert 1 <= len(true) <= task.max_true()
        assert embed(task.to_tensor(true)).shape == (len(true), 8)  # the tables hold every row
        if spec["cond_kind"] == "tokens":
            build_token_sequence(8, spec["vocab_sizes"], spec.get("token_groups", ()))(task.to_tensor(true))
        c = task.sample_concept(scene, rng)
        assert task.holds(c, scene) and task.holds(task.parse(task.format(c)), scene)
        assert task.holds(task.from_tensor(task.to_tensor([c]))[0], scene)
        f = task.false_concept(c, scene, rng)
        assert f is None or (type(f) is type(c) and not task.holds(f, scene))
        assert task.negation_compatible(c, []) is True
        assert all(isinstance(s, str) and s for s in task.grid_label(scene, rng))
    assert all(task.min_objects <= task.min_objects_for(k) <= task.max_objects
               for k in range(1, task.max_k + 1))
    sets = concept_sets(task, 1, 2, seed=1)
    metrics = task.extra_metrics(sets, [s.scene for s in sets])
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items())


CONDITION_SPECS = {
    "objects": {"cond_kind": "position", "vocab_sizes": ()},
    "relations": {"cond_kind": "tokens", "vocab_sizes": (4, 9, 3, 3, 5, 4, 9, 3, 3),
                  "token_groups": ((0, 1, 2, 3), (4,), (5, 6, 7, 8))},
    "attributes": {"cond_kind": "tokens", "vocab_sizes": (16,)},
}


@pytest.mark.parametrize("name", RECORDED)
def test_condition_spec_is_what_models_used_to_return(name):
    assert get_task(name).condition_spec() == CONDITION_SPECS[name]


def test_builtin_hook_values():
    obj, rel, att = (get_task(n) for n in RECORDED)
    assert (obj.max_k, rel.max_k, att.max_k) == (5, 8, 3)
    assert [obj.min_objects_for(k) for k in (1, 3, 5, 7)] == [1, 3, 5, 5]
    assert [rel.min_objects_for(k) for k in (1, 8)] == [2, 2]
    assert [att.min_objects_for(k) for k in (1, 3)] == [1, 1]
    red, blue, cube = Attribute("red"), Attribute("blue"), Attribute("cube")
    assert not att.negation_compatible(blue, (red, cube))  # NOT blue beside red: trivial
    assert att.negation_compatible(blue, (cube,))
    assert rel.extra_metrics([], []) == {} and att.extra_metrics([], []) == {}


def test_objects_extra_metrics_counts_uninvited_objects():
    from compdiff.world.concept_sets import ConceptSet

    obj = get_task("objects")
    o = lambda x, y: Obj("cube", "red", "small", "rubber", x, y)  # noqa: E731
    sets = [ConceptSet((Position(0.2, 0.2),), None, Scene((o(0.2, 0.2),))),
            ConceptSet((Position(0.2, 0.2), Position(0.7, 0.7)), None, Scene((o(0.2, 0.2), o(0.7, 0.7))))]
    judged = [Scene((o(0.25, 0.2), o(0.8, 0.3), o(0.5, 0.9))),  # one near the request, two extra
              Scene((o(0.2, 0.2), o(0.7, 0.7 + 0.081)))]        # just outside the radius: one extra
    assert obj.extra_metrics(sets, judged) == {"extra_objects": 1.5}


# ---- a subclass missing a hook fails at instantiation -------------------------------
def _complete_namespace() -> dict:
    return {"name": "tiny", "help": "a tiny task, e.g. 'x'", "max_k": 1,
            **{hook: (lambda self, *a: None) for hook in REQUIRED - {"name", "help", "max_k"}}}


def test_a_complete_subclass_instantiates():
    assert type("Tiny", (Task,), _complete_namespace())().name == "tiny"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_subclass_missing_a_hook_raises_typeerror(missing):
    ns = _complete_namespace()
    del ns[missing]
    cls = type("Incomplete", (Task,), ns)
    with pytest.raises(TypeError, match=missing):
        cls()


# ---- the registry ---------------------------------------------------------------------
class OtherAttributes(AttributesTask):
    name = "attributes2"
    help = "like attributes, under another name"


@pytest.fixture
def other():
    task = OtherAttributes()
    yield task
    if "attributes2" in task_names():
        unregister_task("attributes2")


def test_register_get_and_unregister(other):
    assert register_task(other) is other
    assert get_task("attributes2") is other and get_task(other) is other
    assert task_names() == (*TASKS, "attributes2")
    assert "  attributes2: like attributes, under another name" in task_help().splitlines()
    assert unregister_task("attributes2") is other
    assert task_names() == TASKS


def test_replacing_a_name_needs_replace(other):
    register_task(other)
    with pytest.raises(ValueError, match="already registered"):
        register_task(OtherAttributes())
    with pytest.raises(ValueError, match="already registered"):
        register_task(type("Objects2", (AttributesTask,), {"name": "objects"})())
    newer = OtherAttributes()
    assert register_task(newer, replace=True) is newer and get_task("attributes2") is newer


def test_unknown_names_and_non_tasks():
    with pytest.raises(InputError, match="unknown task 'faces'; accepted: objects, relations, attributes"):
        get_task("faces")
    with pytest.raises(InputError, match="unknown task"):
        unregister_task("faces")
    with pytest.raises(TypeError, match="Task instance"):
        register_task(AttributesTask)
    with pytest.raises(ValueError, match="empty name"):
        register_task(type("Nameless", (AttributesTask,), {"name": ""})())


def test_cli_help_lists_registered_tasks(other, capsys):
    register_task(other)
    for argv in (["train", "--help"], ["world", "render", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "attributes2" in " ".join(capsys.readouterr().out.split())
    assert task_help().splitlines()[:len(TASKS)] == [f"  {n}: {get_task(n).help}" for n in TASKS]


# ---- the hooks draw exactly what the old code drew ------------------------------------
def _digest(task: Task, k: int, negate: bool) -> tuple[list, str]:
    sets = concept_sets(task, k, 20, seed=3, negate=negate)
    text = "\n".join(f"{len(s.scene.objects)}|{s.expression(task)}" for s in sets)
    return sets, hashlib.sha256(text.encode()).hexdigest()[:16]


SET_DIGESTS = {  # concept_sets(task, K, 20, seed=3, negate): object counts and expressions (sets version 2)
    ("objects", 1, False): "9481be58d1354241", ("objects", 1, True): "5f021e343aaffba7",
    ("objects", 2, False): "ebe4ad82551a260c", ("objects", 2, True): "8e749d835ff05e66",
    ("objects", 3, False): "382b486f3bd6a95b", ("objects", 3, True): "51e65ba8eac118ce",
    ("objects", 4, False): "cf41087645ea8590", ("objects", 4, True): "0267d4bb1aa4b701",
    ("objects", 5, False): "b5a66ff74f9351c1", ("objects", 5, True): "f836ee38654e9626",
    ("relations", 1, False): "899311b10d38ad98", ("relations", 1, True): "ad7e952e289a2ece",
    ("relations", 2, False): "1d79f7774e23f3dc", ("relations", 2, True): "a5ee38d242041bbb",
    ("relations", 3, False): "94058df51bc80b2e", ("relations", 3, True): "dd360d46fa56a1b9",
    ("relations", 4, False): "407ff8f5e1b268d7", ("relations", 4, True): "aadf5d7146a1bef3",
    ("relations", 5, False): "9f92ffe790c2cc98", ("relations", 5, True): "072d7f3f103fdd21",
    ("relations", 6, False): "49135eae7d366cab", ("relations", 6, True): "14210e6c6188a87e",
    ("relations", 7, False): "09b2a1761e99d67c", ("relations", 7, True): "5815c7ea477d9d1e",
    ("relations", 8, False): "34dd48d35ad54531", ("relations", 8, True): "0d9192df29261645",
    ("attributes", 1, False): "00c09795e45a2599", ("attributes", 1, True): "836b1970e6e42131",
    ("attributes", 2, False): "4e76eff7e631559c", ("attributes", 2, True): "4fe184eafa1448c1",
    ("attributes", 3, False): "b203e41d665ccfae", ("attributes", 3, True): "743c0eff3f2b0012",
}

SET_EXAMPLES = {  # the first two expressions of some of those
    ("objects", 1, True): ('"0.44,0.22" AND NOT "0.73,0.37"', '"0.53,0.79" AND NOT "0.46,0.51"'),
    ("objects", 2, False): ('"0.63,0.71" AND "0.36,0.20"', '"0.20,0.16" AND "0.18,0.59"'),
    ("relations", 1, True): (
        '"a large blue metal cylinder right of a small red rubber cube" AND NOT '
        '"a large cyan sphere left of a large metal cube"',
        '"a large brown metal sphere in front of a large cyan rubber sphere" AND NOT '
        '"a small metal cylinder right of a small gray metal cube"'),
    ("attributes", 2, True): ('"sphere" AND "rubber" AND NOT "small"', '"cyan" AND "small" AND NOT "cube"'),
}


@pytest.mark.parametrize("name", RECORDED)
def test_concept_sets_are_unchanged(name):
    task = get_task(name)
    for k in range(1, task.max_k + 1):
        for negate in (False, True):
            sets, digest = _digest(task, k, negate)
            assert digest == SET_DIGESTS[name, k, negate], (k, negate)
            if (name, k, negate) in SET_EXAMPLES:
                assert tuple(s.expression(task) for s in sets[:2]) == SET_EXAMPLES[name, k, negate]
    with pytest.raises(ValueError, match=f"K must be in 1..{task.max_k}"):
        concept_sets(task, task.max_k + 1, 1)


FALSE_CONCEPTS = {  # seed -> (sampled true concept, false_concept of it, the rng's next draw)
    "objects": [  # the false position to 6 decimals: format's 2 would hide a changed distance
        ("0.89,0.43", "0.961466,0.568602", 558236332), ("0.77,0.20", "0.573806,0.201276", 60966013),
        ("0.20,0.86", "0.206510,0.986828", 200618613), ("0.83,0.61", "0.958363,0.693245", 733630300),
        ("0.38,0.54", "0.307960,0.611187", 214717666), ("0.35,0.21", "0.249492,0.415166", 474536566),
        ("0.24,0.46", "0.288221,0.599235", 901504852), ("0.45,0.12", "0.299241,0.131179", 170457355)],
    "relations": [
        ("a blue metal thing right of a green cube", "a brown metal thing right of a green cube", 26777586),
        ("a large brown rubber cube right of a purple metal cylinder",
         "a large brown rubber cube right of a purple metal cube", 798363091),
        ("a blue rubber thing behind a blue thing", "a blue rubber thing behind a blue cube", 417512925),
        ("a large green thing behind a small blue metal sphere",
         "a large green thing in front of a small blue metal sphere", 733630300),
        ("a small metal cube right of a large blue cube", "a small metal cube left of a large blue cube", 214717666),
        ("a large gray rubber cylinder left of a large red sphere",
         "a large gray rubber cylinder left of a large blue sphere", 405364707),
        ("a purple rubber thing left of a large rubber sphere",
         "a purple rubber thing left of a large metal sphere", 646499864),
        ("a large gray rubber cube in front of a small green sphere",
         "a large gray rubber cube behind a small green sphere", 170457355)],
    "attributes": [
        ("sphere", "cube", 224160552), ("metal", "rubber", 60966013), ("small", "large", 260127498),
        ("red", "cyan", 403104250), ("rubber", "metal", 214717666), ("cyan", "blue", 274186682),
        ("metal", "rubber", 901504852), ("metal", "rubber", 170457355)],
}


@pytest.mark.parametrize("name", RECORDED)
def test_false_concept_is_unchanged(name):
    """Same concepts and the same number of draws: the judge-accuracy numbers stay put."""
    task = get_task(name)
    for seed, expected in enumerate(FALSE_CONCEPTS[name]):
        rng = np.random.default_rng([seed, 11])
        scene = task.scene(900_000_000, seed)
        c = task.sample_concept(scene, rng)
        f = false_concept(task, c, scene, rng)
        f_text = f"{f.x:.6f},{f.y:.6f}" if isinstance(f, Position) else task.format(f)
        assert (task.format(c), f_text, int(rng.integers(1 << 30))) == expected


def test_false_concept_gives_up_with_none():
    obj = get_task("objects")
    crowded = Scene(tuple(Obj("cube", "red", "small", "rubber", x / 20, y / 20)
                          for x in range(21) for y in range(21)), layout="free")
    assert obj.false_concept(Position(0.5, 0.5), crowded, np.random.default_rng(0)) is None


GRID_LABELS = {  # compdiff world render --n 4 --seed 5: the label under each tile
    "objects": [["0.35,0.19", "0.90,0.62", "0.88,0.82", "0.50,0.62"], ["0.75,0.53"],
                ["0.66,0.14", "0.18,0.30", "0.49,0.47", "0.80,0.78"],
                ["0.41,0.12", "0.83,0.14", "0.19,0.27", "0.88,0.84", "0.23,0.61"]],
    "relations": [["a large cyan rubber sphere left of a blue metal sphere"],
                  ["a large metal cylinder left of a cyan metal cylinder"],
                  ["a large sphere right of a small rubber thing"],
                  ["a small rubber sphere right of a small cylinder"]],
    "attributes": [["cylinder", "cyan", "small", "metal"], ["cube", "cyan", "large", "rubber"],
                   ["cylinder", "red", "large", "rubber"], ["cylinder", "purple", "small", "rubber"]],
}
RENDER_TXT_DIGESTS = {"objects": "62a76dbcfe8455aa", "relations": "b467c8c7cd19f463",
                      "attributes": "d7aa00d999374c12"}


@pytest.mark.parametrize("name", RECORDED)
def test_grid_labels_are_unchanged(name, tmp_path, capsys):
    task = get_task(name)
    labels = [task.grid_label(task.scene(5, i), np.random.default_rng([5, i, 1])) for i in range(4)]
    assert labels == GRID_LABELS[name]
    out = tmp_path / "g.png"
    assert main(["world", "render", "--task", name, "--n", "4", "--resolution", "8", "--seed", "5",
                 "--out", str(out)]) == 0
    txt = out.with_suffix(".txt").read_text()
    assert hashlib.sha256(txt.encode()).hexdigest()[:16] == RENDER_TXT_DIGESTS[name]

