"""Fault injection, input files: damaged compressed sources, out-of-range GLUE scores, temporaries left by a
killed stage. Each fault ends in one line naming the file and a fix, exit 2, and no output written."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from helpers import cli, cli_error
from helpers_data import demo_documents, demo_vocab, read_records

from electra_ds.common import fileio
from electra_ds.common.errors import UserError
from electra_ds.finetuning.glue import load_split

TEXT = "".join(f"Sentence number {i} of a document long enough to keep. " for i in range(400))


def corpus_args(tmp_path, path):
    return ("corpus", "--sources", json.dumps([{"type": "local", "paths": [str(path)]}]),
            "--output", tmp_path / "out" / "docs.jsonl", "--stats", tmp_path / "out" / "stats.json")


def assert_no_output(tmp_path):
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_truncated_gzip_source_names_the_file(tmp_path, capsys):
    data = gzip.compress(TEXT.encode())
    path = tmp_path / "book.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    msg = cli_error(capsys, *corpus_args(tmp_path, path))
    assert "book.txt.gz" in msg and "damaged or truncated gzip file" in msg and "gzip -t" in msg
    assert_no_output(tmp_path)


def test_non_gzip_file_named_gz_names_the_file(tmp_path, capsys):
    path = tmp_path / "notes.jsonl.gz"
    path.write_text(json.dumps({"text": TEXT}) + "\n")
    msg = cli_error(capsys, *corpus_args(tmp_path, path))
    assert "notes.jsonl.gz" in msg and "BadGzipFile" in msg
    assert_no_output(tmp_path)


def test_truncated_zstd_source_is_an_error_not_a_short_text(tmp_path, capsys):
    import zstandard

    raw = os.urandom(200_000).hex()  # incompressible, so half the file is half a frame
    path = tmp_path / "big.txt.zst"
    data = zstandard.ZstdCompressor().compress(raw.encode())
    path.write_bytes(data[: len(data) // 2])
    msg = cli_error(capsys, *corpus_args(tmp_path, path))
    assert "big.txt.zst" in msg and "damaged or truncated zstd file" in msg
    assert_no_output(tmp_path)


def test_multi_frame_zstd_and_gzip_read_whole(tmp_path):
    import zstandard

    zc = zstandard.ZstdCompressor()
    (tmp_path / "two.txt.zst").write_bytes(zc.compress(TEXT[:9000].encode()) + zc.compress(TEXT[9000:].encode()))
    (tmp_path / "two.txt.gz").write_bytes(gzip.compress(TEXT[:9000].encode()) + gzip.compress(TEXT[9000:].encode()))
    for name in ("two.txt.zst", "two.txt.gz"):
        out = tmp_path / f"out-{name}" / "docs.jsonl"
        assert cli("corpus", "--sources", json.dumps([{"type": "local", "paths": [str(tmp_path / name)]}]),
                   "--output", out, "--stats", out.with_name("stats.json")) == 0
        assert [r["text"] for r in read_records(out)] == [TEXT.strip()]


@pytest.mark.parametrize("score", ["5.5", "-0.2", "nan"])
def test_stsb_score_outside_0_5_names_file_and_line(tmp_path, score):
    path = tmp_path / "STS-B" / "dev.tsv"
    path.parent.mkdir()
    path.write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t4.2\n1\tc\td\t" + score + "\n")
    with pytest.raises(UserError, match=rf"STS-B/dev\.tsv: field 'score': line 3: score {score} is outside "
                                        r"stsb's range 0-5.*original GLUE file"):
        load_split("stsb", "dev", tmp_path)


def test_stale_temporary_of_a_killed_stage_is_removed_on_the_next_run(tmp_path, caplog):
    """A SIGKILLed shards job leaves `.shards.tmp-*` (18 MB on the demo); the stage's next run removes it."""
    shards = tmp_path / "shards"
    stale = tmp_path / ".shards.tmp-dead0001"
    stale.mkdir()
    (stale / "train-00000.bin").write_bytes(b"\0" * 4096)
    other = tmp_path / ".vocab.tmp-dead0002"  # another output's temporary is not this stage's to remove
    other.mkdir()
    caplog.set_level("WARNING")
    assert cli("shards", "--input", demo_documents(), "--tokenizer-dir", demo_vocab(), "--output-dir", shards,
               "--max-seq-len", "64", "--examples-per-shard", "100000", "--threads", "1") == 0
    assert not stale.exists() and other.exists() and (shards / "index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vocab.tmp-dead0002", "shards"]
    assert any(".shards.tmp-dead0001" in r.getMessage() and "interrupted run" in r.getMessage()
               for r in caplog.records)


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


class _Payload:
    """Unpickling this runs a shell command (the classic malicious-pickle payload)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_checkpoint_cannot_run_code_on_load(tmp_path):
    """DeepSpeed's loaders use torch.load(weights_only=False); resume forces weights_only=True (checkpoint.py)."""
    import pickle

    import torch

    from electra_ds.pretraining.checkpoint import weights_only_loading

    marker, path = tmp_path / "PWNED", tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "client": _Payload(marker)}, path)
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=False)  # what DeepSpeed's load_checkpoint asks for
    assert not marker.exists()
    torch.save({"module": {"w": torch.ones(2)}}, path)  # plain tensors still load
    with weights_only_loading():
        assert torch.load(path, weights_only=False)["module"]["w"].sum() == 2


def test_the_mlflow_ui_listens_on_localhost_only():
    """`make mlflow-ui` must not expose the runs (params include paths and the config) to the network."""
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    line = next(ln for ln in makefile.splitlines() if "mlflow ui" in ln)
    assert "--host 127.0.0.1" in line and "0.0.0.0" not in makefile
