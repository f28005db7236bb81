"""Faults in the data a run reads (issue 24 items 5, 10 and 12): a shard that changes under a running job, a
tokenizer that does not belong to the model, and user files that are not UTF-8, not JSON or not what they claim
to be, each refused in one line naming the file (the reader of each class, parametrized)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, cli, cli_error, electra_ds
from test_pretrain import pretrain_args

from electra_ds.common.errors import UserError


def copy_shards(prepared, tmp_path) -> Path:
    shards = tmp_path / "shards"
    shutil.copytree(prepared["shards"], shards)
    return shards


# ---- 5. a shard that changes under a running job -------------------------------------------------------------
def _rewrite_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = bytes(64)  # other tokens, same size (in place: the memory map sees the new bytes)
    time.sleep(0.01)  # a new modification time even on coarse clocks
    with open(path, "r+b") as f:
        f.write(data)


def _replace_by_rename(path: Path) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(path.read_bytes()[::-1])
    os.replace(tmp, path)  # a new inode, as a rerun of the shards stage makes


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)  # reading the mapped tail now would be SIGBUS


@pytest.mark.parametrize("change, said", [(_rewrite_same_size, "rewritten or replaced"),
                                          (_replace_by_rename, "rewritten or replaced"),
                                          (_truncate, "changed size"),
                                          (Path.unlink, "is gone")])
def test_a_shard_changed_after_open_is_refused_at_its_next_read(prepared, tmp_path, change, said):
    from electra_ds.data.shard_format import open_split

    shards = copy_shards(prepared, tmp_path)
    train = open_split(shards, "train")
    before = train.batch(np.arange(8))
    path = shards / "train-00000.bin"
    change(path)
    with pytest.raises(UserError) as err:
        train.batch(np.arange(8))
    assert str(path) in str(err.value) and said in str(err.value) and "checkpoints are kept" in str(err.value)
    valid = open_split(shards, "valid")  # another file, untouched: still read
    assert len(valid.batch([0])) == 1 and before.shape == (8, train.max_seq_len)


@pytest.mark.slow  # about 35 s: one process to its first checkpoint (28 s on 2 busy cores), then the stop
def test_a_shard_rewritten_during_pretraining_stops_the_run_naming_it_and_keeps_the_checkpoint(prepared, tmp_path):
    """A real run (one process): once its first checkpoint is written, the train shard is rewritten in place with
    the same size; the run stops at its next step with exit 2 and one line naming the file, and the checkpoint
    stays the one ``latest`` names."""
    from electra_ds.pretraining.checkpoint import read_latest

    shards, out = copy_shards(prepared, tmp_path), tmp_path / "out"
    args = pretrain_args({**prepared, "shards": shards}, out, steps=100000)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "electra_ds", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 240
        while read_latest(out / "checkpoints")[0] is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        tag = read_latest(out / "checkpoints")[0]
        assert tag is not None, "no checkpoint was written"
        _rewrite_same_size(shards / "train-00000.bin")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("electra-ds pretrain: error: ") and "train-00000.bin" in last, err[-3000:]
    assert "Traceback" not in err
    latest, _ = read_latest(out / "checkpoints")
    assert latest is not None and (out / "checkpoints" / latest / "electra_ds_manifest.json").is_file()
    assert not (out / "summary.json").exists()


# ---- 10. what is exported belongs together ------------------------------------------------------------------
def _fake_summary(tmp_path, **fields) -> Path:
    summary = {"tag": "step00000003", "steps": 3, "zero_stage": 2, "objective": "electra",
               "checkpoint_dir": "checkpoints", "model": {"vocab_size": 2000, "embedding_size": 32, "hidden_size": 32,
                                                          "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
               **fields}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def test_export_with_another_tokenizer_than_the_models_is_refused(prepared, tmp_path, capsys):
    """The summary records the shards' tokenizer sha256: another tokenizer is refused before anything is read or
    written; a summary without it (older runs) still refuses a tokenizer of another vocabulary size."""
    out = tmp_path / "export"
    summary = _fake_summary(tmp_path, tokenizer_sha256="0" * 64)
    line = cli_error(capsys, "export", "--pretrain-summary", summary, "--tokenizer-dir", prepared["vocab"],
                     "--output-dir", out)
    assert "this is not the tokenizer the model of" in line and str(prepared["vocab"]) in line, line
    summary = _fake_summary(tmp_path, model={"vocab_size": 8000, "hidden_size": 32, "num_heads": 2})
    line = cli_error(capsys, "export", "--pretrain-summary", summary, "--tokenizer-dir", prepared["vocab"],
                     "--output-dir", out)
    assert "the tokenizer has 2000 pieces, the model's vocabulary 8000" in line, line
    assert not out.exists()


def test_pretraining_with_another_tokenizer_than_the_shards_is_refused(prepared, tmp_path):
    vocab = tmp_path / "vocab"
    shutil.copytree(prepared["vocab"], vocab)
    with open(vocab / "spm.model", "ab") as f:
        f.write(b"\0")  # another file than the one the shards index names
    res = electra_ds(pretrain_args(prepared, tmp_path / "out", extra=("--tokenizer-dir", vocab)))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "this is not the tokenizer the shards in" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


# ---- 12. the tracebacks that are left: every reader of user files, one class at a time -------------------------
LATIN1 = "caf\xe9".encode("latin-1")  # b"caf\xe9": not UTF-8


def _glue_reader(path: Path):
    from electra_ds.finetuning.glue import get_task, load_split

    folder = path.parent / "SST-2"
    folder.mkdir(exist_ok=True)
    shutil.move(path, folder / "train.tsv")
    return load_split(get_task("sst2"), "train", data_dir=path.parent)


def _fileio_jsonl(path):
    from electra_ds.common.fileio import read_jsonl

    return list(read_jsonl(path))


def _stage_jsonl(path):
    from electra_ds.common.progress import Progress, read_jsonl

    return list(read_jsonl(path, Progress("test", unit="docs")))


def _json(path):
    from electra_ds.common.fileio import read_json

    return read_json(path)


def _export_summary(path):
    from electra_ds.pretraining.export import read_summary

    return read_summary(path)


def _shard_index(path):
    from electra_ds.data.shard_format import read_index

    path.rename(path.parent / "index.json")
    return read_index(path.parent)


# (reader, good first lines, the bad line): the bad line is line 3 of the file
TEXT_READERS = {
    "glue tsv": (_glue_reader, b"sentence\tlabel\nit is fine\t1\n"),
    "jsonl (fileio)": (_fileio_jsonl, b'{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n'),
    "jsonl (stages)": (_stage_jsonl, b'{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n'),
    "json": (_json, b'{\n"a": 1,\n'),
    "pretrain summary": (_export_summary, b'{\n"tag": 1,\n'),
    "shards index": (_shard_index, b'{\n"format": 1,\n'),
}


@pytest.mark.parametrize("name", list(TEXT_READERS))
def test_a_latin1_byte_names_the_file_and_line(tmp_path, name):
    reader, head = TEXT_READERS[name]
    path = tmp_path / "file"
    bad = b"un " + LATIN1 + b" \t0\n" if name == "glue tsv" else b'{"id": 3, "text": "' + LATIN1 + b'"}\n'
    path.write_bytes(head + bad)
    with pytest.raises(UserError) as err:
        reader(path)
    message = str(err.value)
    assert "line 3 (byte" in message and "not UTF-8" in message and "0xe9" in message, message
    assert "file" in message or "train.tsv" in message or "index.json" in message


@pytest.mark.parametrize("name", ["jsonl (fileio)", "jsonl (stages)", "json", "pretrain summary", "shards index"])
@pytest.mark.parametrize("content", [b"", b"{\"a\": 1", b"\x00\x01garbage"])
def test_empty_or_garbled_json_names_the_file(tmp_path, name, content):
    reader, _ = TEXT_READERS[name]
    path = tmp_path / "file"
    path.write_bytes(content)
    if name.startswith("jsonl") and not content:
        assert reader(path) == []  # an empty JSONL file is no records (the stages refuse "no documents" then)
        return
    with pytest.raises(UserError) as err:
        reader(path)
    assert ("file" in str(err.value) or "index.json" in str(err.value)) and "Traceback" not in str(err.value)


@pytest.mark.parametrize("index, field", [
    ([], "(top level)"), ({"format": "electra-ds-shards-v1"}, "max_seq_len"),
    ({"format": "electra-ds-shards-v1", "max_seq_len": 64, "vocab_size": 2000, "dtype": "uint16", "splits": 5},
     "splits"),
    ({"format": "electra-ds-shards-v1", "max_seq_len": 64, "vocab_size": 2000, "dtype": "float64", "splits": {}},
     "dtype"),
    ({"format": "electra-ds-shards-v1", "max_seq_len": 64, "vocab_size": 2000, "dtype": "uint16",
      "splits": {"train": {"shards": [{"file": "../../etc/passwd", "examples": 1, "sha256": "x"}]}}},
     "splits.train.shards[0].file"),
    ({"format": "electra-ds-shards-v1", "max_seq_len": 64, "vocab_size": 2000, "dtype": "uint16",
      "splits": {"train": {"shards": [{"file": "train-00000.bin", "examples": "3", "sha256": "x"}]}}},
     "splits.train.shards[0].examples"),
])
def test_a_shards_index_of_the_wrong_shape_names_the_field(tmp_path, index, field):
    from electra_ds.data.shard_format import open_split

    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=re.escape(f"field '{field}'")):
        open_split(tmp_path, "train")


@pytest.mark.parametrize("file", ["tokenizer.json", "spm.model"])
def test_a_garbled_tokenizer_file_names_the_folder(prepared, tmp_path, file):
    from electra_ds.common.userfiles import load_hf_tokenizer
    from electra_ds.data.vocab_format import load_sentencepiece

    vocab = tmp_path / "vocab"
    shutil.copytree(prepared["vocab"], vocab)
    (vocab / file).write_bytes(b"\x00garbage{")
    with pytest.raises(UserError) as err:
        load_hf_tokenizer(vocab) if file == "tokenizer.json" else load_sentencepiece(vocab)
    assert str(vocab) in str(err.value)


def test_a_corpus_of_only_whitespace_is_refused_at_the_corpus_stage(tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n   \n\u00a0\n")
    out = tmp_path / "docs.jsonl"
    line = cli_error(capsys, "corpus", "--sources", json.dumps([{"type": "local", "paths": [str(blank)],
                                                                  "documents": "line"}]),
                     "--output", out, "--stats", tmp_path / "stats.json", "--min-chars", 0)
    assert "corpus is empty after normalisation" in line and "too_short" in line, line
    assert not out.exists()
