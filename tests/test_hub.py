"""The Hub on compute nodes (issue 23 item 4): what a run reads from the Hugging Face Hub is fetched once by a local
rule (the login node), and the jobs that read it run offline from that cache. No test touches the network: the
fetch is `datasets.load_dataset` replaced, the offline reads come from a cache laid out as `datasets` writes it."""

from __future__ import annotations

import glob
import json
import shlex
import shutil
import socket
from pathlib import Path

import pytest
from helpers import REPO, cli, cli_error, config_with, direct_network, refuse_connections
from helpers_slurm import slurm_jobs

from electra_ds.common.hub import OFFLINE_VARS
from electra_ds.pipeline import prefetch

SMALL = REPO / "config/presets/electra-small.yaml"
GLUE_CONFIGS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")


# -- the plan: a local prefetch job before the jobs that read the Hub, which run offline ---------------------

def _config(tmp_path, base, **overrides):
    return config_with(tmp_path, base, **overrides)


def test_slurm_plan_prefetches_on_the_login_node_and_jobs_read_offline(tmp_path):
    jobs = [j for j in slurm_jobs(tmp_path, _config(tmp_path, SMALL, **{"hub.hf_home": "/shared/hf"}))
            if j["shell"]]
    order = [j["rule"] for j in jobs]
    first = {rule: order.index(rule) for rule in reversed(order)}
    prefetch_job = jobs[first["prefetch"]]
    assert order.count("prefetch") == 1 and prefetch_job["local"]
    assert first["prefetch"] < first["corpus"] and first["prefetch"] < first["finetune"]
    words = shlex.split(prefetch_job["shell"].split(" > ")[0])
    fetched = json.loads(words[words.index("--datasets") + 1])
    assert [(d["id"], d["config"]) for d in fetched] == [("Skylion007/openwebtext", None)] + [
        ("nyu-mll/glue", c) for c in GLUE_CONFIGS]
    assert prefetch_job["shell"].startswith("HF_HOME=/shared/hf electra-ds prefetch ")  # online, into that cache
    for job in jobs:
        if job["rule"] in ("corpus", "finetune"):  # the jobs that read the Hub: offline, from the same cache
            assert job["shell"].startswith("HF_HOME=/shared/hf " + OFFLINE + f"electra-ds {job['rule']} "), job
        else:
            assert "HF_HUB_OFFLINE" not in job["shell"], job
    local = {j["rule"] for j in jobs if j["local"]}
    assert local == {"prefetch", "evaluate"}, local  # cheap rules stay on the login node; the rest are submitted
    assert {"corpus", "finetune", "pretrain", "export"}.isdisjoint(local)


def test_without_hub_sources_nothing_changes(tmp_path):
    """The demo (and any config with local data): no prefetch job, no offline variables, the shell lines as before."""
    jobs = [j for j in slurm_jobs(tmp_path, REPO / "config/config.yaml") if j["shell"]]
    assert "prefetch" not in {j["rule"] for j in jobs}
    assert not any("HF_" in j["shell"] for j in jobs)
    corpus = next(j for j in jobs if j["rule"] == "corpus")
    assert corpus["shell"].startswith("electra-ds corpus ")


def test_hub_prefetch_can_be_turned_off(tmp_path):
    jobs = slurm_jobs(tmp_path, _config(tmp_path, SMALL, **{"hub.prefetch": False}))
    assert "prefetch" not in {j["rule"] for j in jobs}
    assert not any("HF_HUB_OFFLINE" in (j["shell"] or "") for j in jobs)


def test_push_to_hub_is_a_local_job_after_the_export(tmp_path):
    jobs = slurm_jobs(tmp_path, _config(tmp_path, REPO / "config/config.yaml",
                                        **{"export.push_to_hub": {"repo_id": "me/demo-{model}"}}))
    pushes = [j for j in jobs if j["rule"] == "push_to_hub"]
    assert [j["wildcards"]["model"] for j in pushes] == ["electra"]  # pretrained models only: not the scratch one
    assert pushes[0]["local"] and '"repo_id": "me/demo-electra"' in pushes[0]["shell"]
    assert '"private": true' in pushes[0]["shell"]
    order = [(j["rule"], j["wildcards"].get("model")) for j in jobs]
    assert order.index(("export", "electra")) < order.index(("push_to_hub", "electra"))


# -- the prefetch: what it fetches, and its errors -------------------------------------------------------------

class FakeSplit(list):
    pass


@pytest.fixture
def fake_load(monkeypatch):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        if split is not None:
            return FakeSplit([{"text": "x"}] * 3)
        return {"train": FakeSplit([{}] * 5), "validation": FakeSplit([{}] * 2)}

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(prefetch, "hub_unreachable", lambda: None)  # never touch the network
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)  # restored after the test (the command sets it)
    return calls


def test_prefetch_fetches_what_the_config_reads(tmp_path, fake_load):
    marker = tmp_path / "prefetch.json"
    config = _config(tmp_path, SMALL, **{"finetune.tasks": ["rte", "sst2", "probe-adjacency"],
                                         "finetune.init_from_mnli": True, "hub.hf_home": str(tmp_path / "hf")})
    assert cli("prefetch", "--configfile", config, "--marker", marker) == 0
    assert fake_load == [("Skylion007/openwebtext", None, "train", None), ("nyu-mll/glue", "rte", None, None),
                         ("nyu-mll/glue", "sst2", None, None), ("nyu-mll/glue", "mnli", None, None)]
    record = json.loads(marker.read_text())
    assert record["hf_home"] == str(tmp_path / "hf")
    assert record["datasets"][0]["rows"] == {"train": 3} and record["datasets"][1]["rows"]["validation"] == 2


def test_local_glue_and_probe_tasks_need_no_prefetch(tmp_path, fake_load):
    config = _config(tmp_path, REPO / "config/config.yaml", **{"finetune.tasks": ["rte"], "finetune.glue_dir": "x"})
    assert prefetch.plan(prefetch.load_config(config)) == []
    assert cli("prefetch", "--configfile", REPO / "config/config.yaml") == 0 and fake_load == []


def test_a_failed_download_is_one_line_naming_the_source_and_the_fix(tmp_path, fake_load, monkeypatch, capsys):
    import datasets

    def unreachable(path, name=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    msg = cli_error(capsys, "prefetch", "--configfile", SMALL, "--marker", tmp_path / "marker.json")
    assert msg.startswith("electra-ds prefetch: error: field 'corpus.sources[0]': prefetch of Skylion007/openwebtext")
    assert "ConnectionError" in msg and "Fix: run prefetch where huggingface.co is reachable" in msg
    assert not (tmp_path / "marker.json").exists()


def test_prefetch_without_a_connection_stops_at_once_naming_the_host(tmp_path, fake_load, monkeypatch, capsys):
    """No network on the node: one line naming the host (HF_ENDPOINT's when set) within the connect timeout, before
    any download is tried, and no marker."""
    from electra_ds.common import hub

    monkeypatch.setattr(prefetch, "hub_unreachable", hub.hub_unreachable)  # the real check, on a socket that refuses
    direct_network(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org")
    asked = refuse_connections(monkeypatch, "no route to host")
    msg = cli_error(capsys, "prefetch", "--configfile", SMALL, "--marker", tmp_path / "marker.json")
    assert "cannot reach hf-mirror.example.org:443 (no route to host), and prefetch downloads " \
           "Skylion007/openwebtext split train and 9 more" in msg and "Fix: run prefetch where the Hub is reachable" in msg
    assert asked == [("hf-mirror.example.org", 443)]
    assert fake_load == [] and not (tmp_path / "marker.json").exists()


def test_prefetch_refuses_to_run_offline(tmp_path, fake_load, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    msg = cli_error(capsys, "prefetch", "--configfile", SMALL, "--marker", tmp_path / "marker.json")
    assert "HF_DATASETS_OFFLINE is set, but prefetch downloads Skylion007/openwebtext split train and 9 more" in msg
    assert fake_load == [] and not (tmp_path / "marker.json").exists()


# -- the jobs, offline: they read what the prefetch left in the cache ------------------------------------------

def cache_hub_dataset(cache: Path, repo_id: str, config: str, splits: dict) -> None:
    """A Hub dataset in the `datasets` cache as `load_dataset(repo_id, config)` leaves it (prepared Arrow files and
    dataset_info.json under <cache>/<namespace>___<name>/<config>/<version>/<hash>/), built offline from JSON."""
    import datasets

    source = cache.parent / f"src-{config}"
    source.mkdir(parents=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(source / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.load_dataset("json", data_files=files, cache_dir=str(source / "cache"))
    built = Path(glob.glob(str(source / "cache" / "json" / "*" / "*" / "*"))[0])
    namespace, name = repo_id.split("/")
    target = cache / f"{namespace}___{name}" / config / built.parts[-2] / built.parts[-1]
    shutil.copytree(built, target)
    info = json.loads((target / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(json.dumps({**info, "config_name": config, "dataset_name": name}))
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", f"{name}-", 1))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    import datasets

    cache = tmp_path / "hf" / "datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return cache


def test_the_corpus_job_reads_a_prefetched_source_offline(tmp_path, offline_cache, capsys):
    texts = [f"Document number {i} is long enough to be kept by the corpus stage's length filter." for i in range(4)]
    cache_hub_dataset(offline_cache, "someone/owt", "default", {"train": [{"text": t} for t in texts]})
    out = tmp_path / "corpus"
    sources = json.dumps([{"type": "hf", "name": "someone/owt"}])
    assert cli("corpus", "--sources", sources, "--output", out / "docs.jsonl", "--stats", out / "stats.json",
               "--min-chars", 10, "--results-dir", tmp_path) == 0
    docs = [json.loads(line) for line in (out / "docs.jsonl").read_text().splitlines()]
    assert [d["text"] for d in docs] == texts and docs[0]["source"] == "hf:someone/owt"
    # not prefetched: one line that says how to prefetch
    msg = cli_error(capsys, "corpus", "--sources", json.dumps([{"type": "hf", "name": "someone/other"}]),
                    "--output", out / "other.jsonl", "--stats", out / "other.json", "--results-dir", tmp_path)
    assert "source someone/other" in msg and "not in the local cache" in msg and "electra-ds prefetch" in msg
    assert not (out / "other.jsonl").exists()


def test_the_finetune_data_is_read_from_the_prefetched_cache_offline(offline_cache):
    from electra_ds.common.errors import UserError
    from electra_ds.finetuning.glue import load_split

    row = {"sentence1": "A man sleeps.", "sentence2": "Someone sleeps.", "label": 0, "idx": 0}
    cache_hub_dataset(offline_cache, "someone/glue", "rte", {"train": [row], "validation": [{**row, "idx": 7}]})
    assert load_split("rte", "dev", hub_id="someone/glue") == [
        {"text_a": "A man sleeps.", "text_b": "Someone sleeps.", "label": 0, "idx": 7}]
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE is set, and the Hub dataset 'someone/glue' config mrpc is "
                                        r"not in the local cache .*Fix: run `electra-ds prefetch"):
        load_split("mrpc", "train", hub_id="someone/glue")
