"""The frozen-feature linear probe: it finds a planted signal and nothing in shuffled labels; the CLI end to end on a
tiny exported model (local GLUE-like TSVs, and the real SST-2 when ../shared/data is there); bad input; the evaluate
report's frozen probe table; the rule in the workflow's plan."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from helpers import REPO, cli, cli_error
from helpers_models import build_tiny_model_dir, write_tsv

from electra_ds.finetuning import linear_probe

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

WORDS = ["alder", "birch", "cedar", "daisy", "ember", "fjord", "grove", "heron", "inlet", "juniper", "kestrel",
         "larch", "maple", "nettle", "otter", "poplar", "quartz", "raven", "sorrel", "thistle"]
MARK = "zebra"  # the planted signal: a sentence is positive iff it holds this word
MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")


def _sentence(rng, mark: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
    if mark:
        words[rng.randrange(len(words))] = MARK
    return " ".join(words)


def write_glue_like(root, seed: int = 0, shuffle_labels: bool = False, n_train: int = 300, n_dev: int = 300):
    """SST-2 (label 1 iff the sentence holds MARK) and MRPC (label 1 iff the second sentence is the first) in the
    GLUE layout; with ``shuffle_labels`` the same texts with labels that carry nothing (a seeded permutation)."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        labels = [i % 2 for i in range(n)]
        rng.shuffle(labels)
        sst = [(_sentence(rng, bool(y)), y) for y in labels]
        mrpc = []
        for i, y in enumerate(labels):
            a = _sentence(rng, False)
            b = a if y else _sentence(rng, False)
            mrpc.append((y, 2 * i, 2 * i + 1, a, b))
        if shuffle_labels:
            shuffled = labels[:]
            rng.shuffle(shuffled)
            sst = [(s, y) for (s, _), y in zip(sst, shuffled)]
            mrpc = [(y, *row[1:]) for row, y in zip(mrpc, shuffled)]
        write_tsv(root / "SST-2" / f"{split}.tsv", [["sentence", "label"], *sst])
        write_tsv(root / "MRPC" / f"{split}.tsv", [MRPC_HEADER, *mrpc])
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    rng = random.Random(1)
    texts = [_sentence(rng, i % 2 == 0) for i in range(400)]
    return build_tiny_model_dir(tmp_path_factory.mktemp("export") / "electra" / "discriminator", texts,
                                vocab_size=200)


def probe(model_dir, data_dir, out, *extra):
    assert cli("linear-probe", "--model-dir", model_dir, "--data-dir", data_dir, "--output", out,
               "--train-examples", 200, "--threads", 1, *extra) == 0
    return json.loads(out.read_text())


# -- the reader on synthetic features ---------------------------------------------------------------------------

def _synthetic(n, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 24))
    return x, (x[:, 5] > 0).astype(int)


def test_the_reader_finds_a_planted_feature_and_nothing_in_shuffled_labels():
    import numpy as np

    x, y = _synthetic(400, 0)
    x_dev, y_dev = _synthetic(400, 1)
    fit = linear_probe.fit_probe(x, y, {"dev": x_dev}, cs=[1e-3, 1e-1, 10], folds=5, seed=0)
    assert np.mean(np.array(fit["predictions"]["dev"]) == y_dev) > 0.95
    assert fit["C"] in (1e-3, 1e-1, 10) and fit["cv_accuracy"] > 0.9 and fit["not_converged"] == 0

    shuffled = np.random.default_rng(2).permutation(y)
    fit = linear_probe.fit_probe(x, shuffled, {"dev": x_dev}, cs=[1e-3, 1e-1, 10], folds=5, seed=0)
    assert abs(np.mean(np.array(fit["predictions"]["dev"]) == y_dev) - 0.5) < 0.1
    assert fit["cv_accuracy"] < 0.65


def test_token_spread_is_the_share_of_the_squared_norm_that_varies_between_tokens():
    import numpy as np

    rng = np.random.default_rng(0)
    shared = np.zeros(16)
    shared[0] = 10.0  # |c|^2 = 100 against 16 of noise (unit variance in 16 dimensions)
    collapsed = [shared + rng.normal(size=(n, 16)) for n in (300, 500, 200)]
    spread_out = [rng.normal(size=(n, 16)) for n in (300, 500, 200)]
    spread = linear_probe.TokenSpread()
    for a, b in zip(collapsed, spread_out):  # batch by batch, two layers
        spread.add([b, a])
    assert spread.tokens == 1000
    out, shared_layer = spread.shares()
    assert out == pytest.approx(1.0, abs=0.02) and shared_layer == pytest.approx(16 / 116, abs=0.02)
    whole = linear_probe.TokenSpread()  # the same tokens in one batch give the same figures
    whole.add([np.concatenate(spread_out), np.concatenate(collapsed)])
    assert whole.shares() == pytest.approx([out, shared_layer], rel=1e-9)
    assert linear_probe.TokenSpread().shares() == []


def test_the_training_subset_is_seeded_and_the_same_as_finetunes():
    examples = [{"idx": i} for i in range(100)]
    chosen = linear_probe.training_subset(examples, 10, 0)
    assert chosen == linear_probe.training_subset(examples, 10, 0) != linear_probe.training_subset(examples, 10, 1)
    assert [e["idx"] for e in chosen] == sorted(random.Random(0).sample(range(100), 10))  # finetune's choice
    assert linear_probe.training_subset(examples, 500, 0) == examples


# -- the stage on a tiny exported model -------------------------------------------------------------------------

def test_the_probe_finds_a_planted_token_and_an_identical_pair(tiny_model, tmp_path):
    data = write_glue_like(tmp_path / "glue")
    result = probe(tiny_model, data, tmp_path / "probe.json")
    assert result["model"] == "electra" and result["layers"] == ["embeddings", "layer 1", "layer 2"]
    sst2, mrpc = result["tasks"]["sst2"], result["tasks"]["mrpc"]
    assert sst2["kind"] == "single" and sst2["dim"] == 32 and mrpc["kind"] == "pair" and mrpc["dim"] == 4 * 32
    for task in (sst2, mrpc):
        assert task["n_train"] == 200 and task["n_train_available"] == 300 and task["n_dev"] == 300
        assert len(task["accuracy"]) == len(task["C"]) == len(task["layers"]) == 3
        assert abs(task["majority"]["accuracy"] - 0.5) < 0.01
        assert task["best_accuracy"] == max(task["accuracy"]) == task["accuracy"][task["best_layer"]]
        assert set(task["seconds"]) == {"features", "fit"}
        assert len(task["token_spread"]) == 3 and all(0 <= v <= 1 for v in task["token_spread"])
        assert [e["token_spread"] for e in task["layers"]] == task["token_spread"]
    assert sst2["best_accuracy"] > 0.95  # the embedding layer alone carries the planted word
    assert min(mrpc["accuracy"]) > 0.97  # |u - v| is 0 exactly for the positive pairs, at every layer
    assert result["settings"]["train_examples"] == 200 and result["seconds"] > 0


def test_the_probe_finds_nothing_in_shuffled_labels(tiny_model, tmp_path):
    data = write_glue_like(tmp_path / "glue", shuffle_labels=True)
    result = probe(tiny_model, data, tmp_path / "probe.json")
    for name, task in result["tasks"].items():
        for accuracy in task["accuracy"]:
            assert abs(accuracy - task["majority"]["accuracy"]) < 0.1, (name, task["accuracy"])


def test_the_probe_reads_the_real_sst2(tmp_path, shared_data):
    from helpers_models import glue_texts

    glue = shared_data / "glue"
    if not (glue / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"{glue}/SST-2 is absent")
    model = build_tiny_model_dir(tmp_path / "real" / "discriminator", glue_texts(glue, max_lines=300))
    result = probe(model, glue, tmp_path / "probe.json", "--tasks", '["sst2"]')
    sst2 = result["tasks"]["sst2"]
    assert list(result["tasks"]) == ["sst2"]
    assert sst2["n_train"] == 200 and sst2["n_train_available"] == 67349 and sst2["n_dev"] == 872
    assert 0.45 < sst2["majority"]["accuracy"] < 0.55 and all(0.3 < a < 0.8 for a in sst2["accuracy"])


def test_probe_tasks_are_read_from_the_probes_folder(tiny_model, tmp_path):
    """The demo's probe tasks (CoLA and MRPC layouts, in the probes stage's folder) work the same way."""
    rng = random.Random(3)
    for split in ("train", "dev"):
        labels = [i % 2 for i in range(120)]
        write_tsv(tmp_path / "probes" / "probe-acceptability" / f"{split}.tsv",
                  [["src", y, "", _sentence(rng, bool(y))] for y in labels])
        write_tsv(tmp_path / "probes" / "probe-adjacency" / f"{split}.tsv",
                  [MRPC_HEADER] + [[y, i, i, s, s if y else _sentence(rng, False)]
                                   for i, y in enumerate(labels) for s in [_sentence(rng, False)]])
    out = tmp_path / "probe.json"
    assert cli("linear-probe", "--model-dir", tiny_model, "--probes-dir", tmp_path / "probes", "--output", out,
               "--tasks", '["probe-acceptability", "probe-adjacency"]') == 0
    result = json.loads(out.read_text())
    assert result["tasks"]["probe-acceptability"]["best_accuracy"] > 0.9
    assert "mcc" in result["tasks"]["probe-acceptability"]["layers"][0]["metrics"]
    assert result["tasks"]["probe-adjacency"]["kind"] == "pair"


# -- bad input --------------------------------------------------------------------------------------------------

def test_bad_input_names_the_file_or_field(tiny_model, tmp_path, capsys):
    data = write_glue_like(tmp_path / "glue", n_train=40, n_dev=20)
    out = tmp_path / "probe.json"
    base = ["linear-probe", "--model-dir", tiny_model, "--output", out]

    shutil.rmtree(data / "MRPC")
    msg = cli_error(capsys, *base, "--data-dir", data)
    assert str(data / "MRPC" / "train.tsv") in msg
    msg = cli_error(capsys, *base, "--data-dir", data, "--tasks", '["sst2", "nope"]')
    assert "linear_probe.tasks" in msg and "'nope'" in msg
    msg = cli_error(capsys, *base, "--data-dir", data, "--tasks", '["stsb"]')
    assert "linear_probe.tasks" in msg and "regression" in msg
    msg = cli_error(capsys, *base, "--tasks", '["sst2"]')
    assert "--data-dir" in msg
    msg = cli_error(capsys, *base, "--probes-dir", data, "--tasks", '["sst2"]')
    assert "--data-dir" in msg  # a GLUE task is never read from the probes folder
    msg = cli_error(capsys, "linear-probe", "--model-dir", tmp_path, "--output", out, "--data-dir", data,
                    "--tasks", '["sst2"]')
    assert "--model-dir" in msg and "config.json" in msg
    msg = cli_error(capsys, *base, "--data-dir", data, "--tasks", '["sst2"]', "--folds", "1")
    assert "linear_probe.folds" in msg
    write_tsv(data / "SST-2" / "train.tsv", [["sentence", "label"], ["one label only", 1], ["again", 1]])
    msg = cli_error(capsys, *base, "--data-dir", data, "--tasks", '["sst2"]')
    assert str(data / "SST-2" / "train.tsv") in msg and "single label" in msg
    assert not out.exists()


# -- the evaluate report ----------------------------------------------------------------------------------------

def _metrics(root, model, source):
    path = root / model / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": "sst2", "seed": 1, "epochs": 3, "dev": {"accuracy": 0.6},
                                "main_metric": "accuracy", "main": 0.6, "model": model, "model_source": source,
                                "train_examples": 10, "seconds": 1.0, "model_dir": "m"}))
    return path


def test_evaluate_puts_the_frozen_probe_table_in_every_report(tiny_model, tmp_path):
    data = write_glue_like(tmp_path / "glue", n_train=60, n_dev=40)
    electra = probe(tiny_model, data, tmp_path / "electra.json", "--tasks", '["sst2"]', "--folds", "3")
    scratch = {**electra, "model": "scratch"}
    scratch["tasks"] = {"sst2": {**electra["tasks"]["sst2"], "accuracy": [0.5, 0.55, 0.6], "best_layer": 2,
                                 "best_accuracy": 0.6}}
    (tmp_path / "scratch.json").write_text(json.dumps(scratch))
    metrics = [_metrics(tmp_path / "ft", "electra", "pretrained"), _metrics(tmp_path / "ft", "scratch", "scratch")]
    out = {k: tmp_path / "eval" / f"results.{k}" for k in ("json", "md", "html")}
    common = ["evaluate", "--metrics", *metrics, "--output-json", out["json"], "--output-md", out["md"],
              "--output-html", out["html"], "--models", "electra", "scratch", "--compare-runs", "0"]
    # the scratch file first: the table follows the models' order
    assert cli(*common, "--linear-probe", tmp_path / "scratch.json", tmp_path / "electra.json") == 0

    md = out["md"].read_text()
    assert "# Frozen probe" in md and "scratch (random weights: the baseline)" in md
    header = next(line for line in md.splitlines() if line.startswith("| model | sst2 emb"))
    assert header.split(" | ")[1:] == ["sst2 emb", "sst2 L1", "sst2 L2", "sst2 best (layer)", "sst2 best - scratch |"]
    section = md.split("# Frozen probe", 1)[1].split("\n## ", 1)[0].split("Token spread per layer")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| electra", "| scratch (random weights: the baseline)", "| majority class"]
    best = electra["tasks"]["sst2"]["best_accuracy"]
    assert rows[0].endswith(f" | {100 * (best - 0.6):+.1f} |") and rows[1].endswith(" | 60.0 (L2) | - |")
    # one run: the table says what chance alone moves (binomial standard error on the dev set), not a spread
    n_dev = electra["tasks"]["sst2"]["n_dev"]
    se = 100 * (best * (1 - best) / n_dev) ** 0.5
    assert f"no spread is shown; a dev accuracy near {100 * best:.0f}% on {n_dev} examples" in md
    assert f"binomial standard error of {se:.1f} points" in md and f"under about {2 * 2 ** 0.5 * se:.1f} points" in md
    spread = electra["tasks"]["sst2"]["token_spread"]
    assert "Token spread per layer" in md
    assert "| electra | sst2 | " + " | ".join(f"{v:.2f}" for v in spread) + " |" in md
    assert "Frozen probe" in out["html"].read_text()
    table = json.loads(out["json"].read_text())["linear_probe"]
    assert list(table["models"]) == ["electra", "scratch"]
    assert table["models"]["electra"]["tasks"]["sst2"]["accuracy"] == electra["tasks"]["sst2"]["accuracy"]
    assert table["table"]["rows"][-1][0] == "majority class"

    assert cli(*common) == 0  # no probe files: no table, the rest unchanged
    assert "Frozen probe" not in out["md"].read_text() and "linear_probe" not in json.loads(out["json"].read_text())


def test_evaluate_rejects_a_file_that_is_not_a_probe_result(tmp_path, capsys):
    metrics = [_metrics(tmp_path / "ft", "electra", "pretrained")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "electra", "tasks": {}}))
    msg = cli_error(capsys, "evaluate", "--metrics", *metrics, "--output-json", tmp_path / "r.json", "--output-md",
                    tmp_path / "r.md", "--compare-runs", "0", "--linear-probe", bad)
    assert str(bad) in msg and "layers" in msg


# -- the workflow -----------------------------------------------------------------------------------------------

def _plan(tmp_path, config, **overrides):
    import yaml
    from test_pipeline import snakemake

    cfg = yaml.safe_load((REPO / config).read_text())
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(path, tmp_path / "results", extra=["-n", "-p"])
    return res.returncode, res.stdout + res.stderr


def test_the_study_plans_one_probe_per_model_and_evaluate_reads_them(tmp_path):
    code, out = _plan(tmp_path, "config/presets/cpu-study.yaml")
    assert code == 0, out[-3000:]
    lines = [line for line in out.splitlines() if "electra-ds linear-probe" in line]
    assert len(lines) == 3 and all("--tasks '[\"sst2\", \"mrpc\"]'" in line for line in lines)
    assert all("/glue" in line.split("--data-dir ")[1].split()[0] for line in lines)
    evaluate = next(line for line in out.splitlines() if "electra-ds evaluate" in line)
    assert evaluate.count("/linear_probe/") == 3


def test_the_demo_probes_its_probe_tasks_and_the_hub_skips_the_rule(tmp_path):
    code, out = _plan(tmp_path, "config/config.yaml")
    assert code == 0, out[-3000:]
    lines = [line for line in out.splitlines() if "electra-ds linear-probe" in line]
    assert len(lines) == 2 and all("probe-acceptability" in line and "--probes-dir" in line for line in lines)

    code, out = _plan(tmp_path, "config/config.yaml", finetune={"tasks": ["rte"]})
    assert code == 0, out[-3000:]
    assert "electra-ds linear-probe" not in out and "--linear-probe" not in out

    code, out = _plan(tmp_path, "config/config.yaml", linear_probe={"tasks": ["sst2"]})
    assert code != 0 and "linear_probe.tasks" in out and "glue_dir" in out
