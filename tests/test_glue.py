"""GLUE/probe task registry and loaders: real files from ../shared/data/glue, the official layouts of
MNLI/QQP/QNLI/AX written to tmp_path, the probe layouts, and every kind of bad input."""

from __future__ import annotations

import socket

import pytest
from helpers import REPO, direct_network, refuse_connections, shared_data_dir
from helpers_models import write_tsv

from electra_ds.common.errors import UserError
from electra_ds.finetuning import glue
from electra_ds.finetuning.glue import get_task, load_split, prediction_to_string

GLUE_DIR = (shared_data_dir() or REPO.parent / "shared-data-absent") / "glue"  # skipped below when absent
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"real GLUE data absent ({GLUE_DIR}); "
                                "set ELECTRA_DS_SHARED_DATA to the shared data folder")

# Row counts of the README table (train, dev, test).
REAL_COUNTS = {"cola": (8551, 1043, 1063), "sst2": (67349, 872, 1821), "mrpc": (3668, 408, 1725),
               "stsb": (5749, 1500, 1379), "rte": (2490, 277, 3000), "wnli": (635, 71, 146)}


# -- registry -----------------------------------------------------------------------------------

def test_registry_has_all_glue_tasks_and_probes():
    assert set(glue.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax",
                               "probe-acceptability", "probe-adjacency"}
    assert {n: t.epochs for n, t in glue.TASKS.items() if t.epochs != 3} == {"rte": 10, "stsb": 10}
    assert get_task("cola").main_metric == "mcc" and get_task("stsb").main_metric == "spearman"
    assert get_task("stsb").labels is None and get_task("stsb").num_labels == 1
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert list(get_task("mnli").dev_splits) == ["dev_matched", "dev_mismatched"]
    assert list(get_task("mnli").test_files) == ["test_matched", "test_mismatched"]
    assert get_task("SST-2").name == "sst2" and get_task("STS-B").name == "stsb"
    for name in ("probe-acceptability", "probe-adjacency"):
        assert get_task(name).is_probe and get_task(name).dirname == name and get_task(name).hub_config is None
    assert get_task("probe-acceptability").metrics == ("mcc", "accuracy")
    assert get_task("probe-adjacency").metrics == ("accuracy", "f1")
    assert not any(t.is_probe for n, t in glue.TASKS.items() if not n.startswith("probe-"))


def test_unknown_task_lists_valid_names():
    with pytest.raises(UserError, match="unknown task 'glu'.*cola.*probe-adjacency"):
        get_task("glu")


def test_prediction_strings_follow_submission_format():
    assert prediction_to_string(get_task("mnli"), 2) == "contradiction"
    assert prediction_to_string(get_task("rte"), 1) == "not_entailment"
    assert prediction_to_string(get_task("qnli"), 0) == "entailment"
    assert prediction_to_string(get_task("cola"), 1) == "1"
    assert prediction_to_string(get_task("stsb"), 3.14159) == "3.142"
    assert prediction_to_string(get_task("stsb"), 7.0) == "5.000"


# -- real files ----------------------------------------------------------------------------------

@needs_glue
@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_row_counts_match_the_readme(name):
    task = get_task(name)
    counts = tuple(len(load_split(task, split, GLUE_DIR)) for split in ("train", "dev", "test"))
    assert counts == REAL_COUNTS[name]
    train, test = load_split(task, "train", GLUE_DIR), load_split(task, "test", GLUE_DIR)
    assert all(ex["label"] is None for ex in test)
    assert [ex["idx"] for ex in test] == list(range(len(test)))
    assert all(isinstance(ex["text_a"], str) and ex["text_a"] for ex in train)
    if task.labels is None:
        assert all(0.0 <= ex["label"] <= 5.0 for ex in train)
    else:
        assert {ex["label"] for ex in train} == set(range(task.num_labels))


@needs_glue
def test_mrpc_bom_and_stray_quotes():
    train = load_split("mrpc", "train", GLUE_DIR)
    assert train[0]["label"] == 1 and train[0]["text_a"].startswith("Amrozi accused")
    assert '"the witness"' in train[0]["text_a"]
    dev = load_split("mrpc", "dev", GLUE_DIR)
    assert dev[0]["text_b"].startswith('"The foodservice pie')  # unbalanced quote kept, no merged rows
    test = load_split("mrpc", "test", GLUE_DIR)
    assert test[0]["idx"] == 0 and test[0]["text_b"].startswith("Current Chief Operating Officer")


@needs_glue
def test_cola_headerless_train_and_headed_test():
    train = load_split("cola", "train", GLUE_DIR)
    assert train[0] == {"text_a": "Our friends won't buy this analysis, let alone the next one we propose.",
                        "text_b": None, "label": 1, "idx": 0}
    assert sum(ex["label"] == 0 for ex in train) == 2528
    test = load_split("cola", "test", GLUE_DIR)
    assert test[0] == {"text_a": "Bill whistled past the house.", "text_b": None, "label": None, "idx": 0}


@needs_glue
def test_rte_and_stsb_labels():
    rte = load_split("rte", "dev", GLUE_DIR)
    assert rte[0]["label"] == get_task("rte").labels.index("not_entailment")
    stsb = load_split("stsb", "dev", GLUE_DIR)
    assert stsb[0]["label"] == 5.0 and stsb[1]["label"] == 4.75
    assert stsb[0]["text_b"] == "A man wearing a hard hat is dancing."


# -- official layouts of the tasks not in shared data ---------------------------------------------

MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


def test_mnli_layout(tmp_path):
    d = tmp_path / "MNLI"
    write_tsv(d / "train.tsv", [MNLI_HEAD + ["label1", "gold_label"],
                                [0, 31193, "31193n", "government", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
                                 'He said "yes', "He agreed.", "neutral", "neutral"],
                                [1, 101457, "101457e", "telephone", "b", "b", "p", "p", "A", "B",
                                 "entailment", "entailment"]])
    dev = [MNLI_HEAD + ["label1", "label2", "label3", "label4", "label5", "gold_label"],
           [7, 1, "1c", "fiction", "b", "b", "p", "p", "The cat sat.", "No cat.", "contradiction", "neutral",
            "contradiction", "contradiction", "contradiction", "contradiction"]]
    write_tsv(d / "dev_matched.tsv", dev)
    write_tsv(d / "dev_mismatched.tsv", dev)
    write_tsv(d / "test_matched.tsv", [MNLI_HEAD, [0, 1, "1", "slate", "b", "b", "p", "p", "Hi.", "Hello."]])
    train = load_split("mnli", "train", tmp_path)
    assert [ex["label"] for ex in train] == [1, 0]
    assert train[0]["text_a"] == 'He said "yes' and train[0]["text_b"] == "He agreed."
    assert load_split("mnli", "dev_mismatched", tmp_path)[0] == {
        "text_a": "The cat sat.", "text_b": "No cat.", "label": 2, "idx": 7}
    assert load_split("mnli", "test_matched", tmp_path)[0]["label"] is None
    with pytest.raises(UserError, match="has no test_mismatched.tsv"):
        load_split("mnli", "test_mismatched", tmp_path)
    with pytest.raises(UserError, match="no split 'dev'"):
        load_split("mnli", "dev", tmp_path)


def test_qqp_layout_skips_truncated_rows(tmp_path):
    d = tmp_path / "QQP"
    head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(d / "train.tsv", [head, [201359, 303345, 303346, "Why are African-Americans so beautiful?",
                                       "Why are hispanics so beautiful?", 0],
                                [263843, 69383, 380476, "I want to pursue PhD in Computer Science", "?", 1],
                                [5, 11, 12, "How do I solve \\frac{1}{x}?"]])  # truncated row
    write_tsv(d / "test.tsv", [["id", "question1", "question2"], [0, 'Would "you"?', "Who?"]])
    train = load_split("qqp", "train", tmp_path)
    assert [(ex["idx"], ex["label"]) for ex in train] == [(201359, 0), (263843, 1)]
    assert load_split("qqp", "test", tmp_path) == [{"text_a": 'Would "you"?', "text_b": "Who?", "label": None,
                                                    "idx": 0}]


def test_qnli_and_ax_layouts(tmp_path):
    write_tsv(tmp_path / "QNLI" / "dev.tsv", [["index", "question", "sentence", "label"],
                                              [0, "What came?", "The storm came.", "entailment"],
                                              [1, "Who?", "Nobody knows.", "not_entailment"]])
    assert [ex["label"] for ex in load_split("qnli", "dev", tmp_path)] == [0, 1]
    write_tsv(tmp_path / "diagnostic" / "diagnostic.tsv", [["index", "sentence1", "sentence2"],
                                                           [0, "The cat sat.", "The cat did not sit."]])
    ax = load_split("ax", "test", tmp_path)
    assert ax == [{"text_a": "The cat sat.", "text_b": "The cat did not sit.", "label": None, "idx": 0}]
    assert not get_task("ax").has_train


def test_probe_layouts(tmp_path):
    acc = tmp_path / "probe-acceptability"
    write_tsv(acc / "train.tsv", [["probe", 1, "", 'She said "go home" to him.'], ["probe", 0, "*", "Home go."]])
    write_tsv(acc / "test.tsv", [["index", "sentence"], [0, "A sentence."]])
    assert [(ex["label"], ex["text_a"]) for ex in load_split("probe-acceptability", "train", tmp_path)] == [
        (1, 'She said "go home" to him.'), (0, "Home go.")]
    assert load_split("probe-acceptability", "test", tmp_path)[0]["text_a"] == "A sentence."
    adj = tmp_path / "probe-adjacency"
    write_tsv(adj / "dev.tsv", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [1, 0, 1, "A.", "B."]])
    write_tsv(adj / "test.tsv", [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], [5, 0, 1, "C.", "D."]])
    assert load_split("probe-adjacency", "dev", tmp_path)[0] == {"text_a": "A.", "text_b": "B.", "label": 1, "idx": 0}
    assert load_split("probe-adjacency", "test", tmp_path)[0]["idx"] == 5


def test_probe_files_written_by_the_probes_stage_round_trip(tmp_path):
    probes = pytest.importorskip("electra_ds.data.probes")
    if not all(hasattr(probes, f) for f in ("write_acceptability", "write_adjacency")):
        pytest.skip("electra_ds.data.probes has no write_acceptability/write_adjacency")
    text = 'He said "the witness" lied, and left.'
    probes.write_acceptability(tmp_path / "probe-acceptability",
                               {"train": [(text, 1), ("Left he.", 0)], "dev": [(text, 1)], "test": [(text, 0)]})
    probes.write_adjacency(tmp_path / "probe-adjacency",
                           {"train": [(text, "B.", 1)], "dev": [("A.", text, 0)], "test": [(text, "B.", 1)]})
    assert [ex["text_a"] for ex in load_split("probe-acceptability", "train", tmp_path)] == [text, "Left he."]
    assert load_split("probe-acceptability", "test", tmp_path)[0]["text_a"] == text
    assert load_split("probe-adjacency", "dev", tmp_path)[0]["text_b"] == text
    assert load_split("probe-adjacency", "test", tmp_path)[0]["text_a"] == text


# -- bad input -----------------------------------------------------------------------------------

def test_missing_split_file_names_the_file(tmp_path):
    write_tsv(tmp_path / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"]])
    with pytest.raises(UserError, match=r"RTE has no dev\.tsv; expected the original GLUE layout"):
        load_split("rte", "dev", tmp_path)


def test_missing_column_is_named(tmp_path):
    write_tsv(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "hypothesis", "label"],
                                             [0, "a", "b", "entailment"]])
    with pytest.raises(UserError, match=r"dev\.tsv: field 'sentence2': missing column 'sentence2'"):
        load_split("rte", "dev", tmp_path)


@pytest.mark.parametrize("lines, message", [
    ([], "is empty"),
    ([["index", "sentence1", "sentence2", "label"]], "has a header but no rows"),
])
def test_empty_file(tmp_path, lines, message):
    write_tsv(tmp_path / "RTE" / "dev.tsv", lines)
    with pytest.raises(UserError, match=rf"RTE/dev\.tsv: {message}"):
        load_split("rte", "dev", tmp_path)


def test_bad_label_names_file_line_and_value(tmp_path):
    write_tsv(tmp_path / "CoLA" / "train.tsv", [["gj04", 1, "", "Fine."], ["gj04", 2, "", "Odd label."]])
    with pytest.raises(UserError, match=r"CoLA/train\.tsv: field '1': line 2: label '2' is not one of 0, 1"):
        load_split("cola", "train", tmp_path)
    write_tsv(tmp_path / "STS-B" / "dev.tsv", [["index", "sentence1", "sentence2", "score"], [0, "a", "b", "high"]])
    with pytest.raises(UserError, match=r"line 2: label 'high' is not a number"):
        load_split("stsb", "dev", tmp_path)


def test_short_row_is_an_error_outside_qqp(tmp_path):
    write_tsv(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"], [0, "only one"]])
    with pytest.raises(UserError, match="line 2 has 2 tab-separated fields"):
        load_split("rte", "dev", tmp_path)


def test_hub_fails_fast_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set.*nyu-mll/glue"):
        load_split("rte", "train", hub_id="nyu-mll/glue")


def test_hub_fails_fast_when_unreachable(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refuse(address, timeout=None):
        assert address == ("huggingface.co", 443) and timeout == 3.0
        raise OSError("network is unreachable")

    direct_network(monkeypatch)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(UserError, match="cannot reach huggingface.co:443"):
        load_split("cola", "dev", hub_id="nyu-mll/glue")


def test_hub_check_follows_hf_endpoint(monkeypatch):
    """GLUE from the Hub asks the host HF_ENDPOINT names (a mirror), as the corpus's Hub source does."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    direct_network(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org")
    asked = refuse_connections(monkeypatch, "no route to host")
    with pytest.raises(UserError, match="cannot reach hf-mirror.example.org:443 .* to download 'nyu-mll/glue'"):
        load_split("cola", "dev", hub_id="nyu-mll/glue")
    assert asked == [("hf-mirror.example.org", 443)]


def test_hub_check_goes_through_the_proxy_requests_would_use(monkeypatch):
    """A login node that reaches the internet only through HTTPS_PROXY: the check connects to the proxy (a direct
    connection to the Hub would be refused there), and NO_PROXY listing the Hub's host connects directly."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    direct_network(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.cluster.example:3128")
    asked = refuse_connections(monkeypatch, "connection refused")
    with pytest.raises(UserError, match=r"cannot reach the proxy proxy.cluster.example:3128 for huggingface.co \("):
        load_split("cola", "dev", hub_id="nyu-mll/glue")
    monkeypatch.setenv("NO_PROXY", "localhost,huggingface.co")
    with pytest.raises(UserError, match="cannot reach huggingface.co:443"):
        load_split("cola", "dev", hub_id="nyu-mll/glue")
    assert asked == [("proxy.cluster.example", 3128), ("huggingface.co", 443)]


def test_probe_tasks_are_local_only():
    with pytest.raises(UserError, match="exists only locally"):
        load_split("probe-adjacency", "train", hub_id="nyu-mll/glue")


def test_exactly_one_source(tmp_path):
    with pytest.raises(UserError, match="exactly one"):
        load_split("rte", "train")
    with pytest.raises(UserError, match="exactly one"):
        load_split("rte", "train", data_dir=tmp_path, hub_id="nyu-mll/glue")


def test_hub_rows_are_mapped_like_local_files(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        label = -1 if split.startswith("test") else 2
        return [{"premise": "P.", "hypothesis": "H.", "label": label, "idx": 3}]

    monkeypatch.setattr(glue, "check_hub_reachable", lambda hub_id: None)  # never touch the network
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dev = load_split("mnli", "dev_mismatched", hub_id="nyu-mll/glue")
    test = load_split("mnli", "test_matched", hub_id="nyu-mll/glue")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched"), ("nyu-mll/glue", "mnli", "test_matched")]
    assert dev == [{"text_a": "P.", "text_b": "H.", "label": 2, "idx": 3}]
    assert test[0]["label"] is None


def test_what_a_task_shows_is_declared_on_the_task():
    """A GLUE task's report label, GLUE-score membership, common-convention entries and leaderboard files live on its
    Task (adding a task is one entry); the tables the report, evaluate and the submission use are derived from them
    and still say what the GLUE server and the published numbers expect."""
    from electra_ds.finetuning.glue import GLUE_SCORE_TASKS, SCORE_ENTRIES, TASKS
    from electra_ds.finetuning.submission import OFFICIAL_TEST_ROWS, SUBMISSION_FILES

    assert GLUE_SCORE_TASKS == ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
    assert [e for e, _, _ in SCORE_ENTRIES] == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI",
                                                "RTE", "WNLI"]
    assert dict(((e, m) for e, _, m in SCORE_ENTRIES))["STS-B"] == ("pearson", "spearman")
    assert list(SUBMISSION_FILES.values()) == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv",
                                               "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
    assert SUBMISSION_FILES[("mnli", "ax")] == "AX.tsv" and OFFICIAL_TEST_ROWS["QQP.tsv"] == 390965
    assert sum(OFFICIAL_TEST_ROWS.values()) == 426309
    for task in TASKS.values():
        assert task.report_label == (task.label or f"{task.name} ({task.main_metric})")
        assert set(task.submission) <= set(task.test_files) | {"ax"}, task.name  # only splits the job predicts
    assert TASKS["cola"].report_label == "CoLA (MCC)" and TASKS["probe-adjacency"].report_label == \
        "probe-adjacency (accuracy)"
