"""A model others can use (issue 23 item 6): the export's model card, file modes, a tokenizer transformers 4.x loads
too, the pretrain summary's relative checkpoint path, and the push to the Hub (up to the upload call, no network)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import yaml
from helpers import cli, cli_error
from helpers_models import build_tiny_model_dir

from electra_ds.common.fileio import atomic_path
from electra_ds.pretraining.export import checkpoint_dir_of
from electra_ds.pretraining.model_card import render

TINY = {"embedding_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
TEXT = ["The cat sat on the mat.", "A dog barked at the moon.", "Prices rose sharply in the third quarter."] * 30


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def scratch_export(tmp_path_factory):
    """A scratch export (random weights, the same layout and code path as a real one) of a tiny model."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = build_tiny_model_dir(root / "vocab", TEXT, vocab_size=200)
    old = os.umask(0o022)
    try:
        assert cli("export", "--scratch", "--tokenizer-dir", tokenizer, "--output-dir", root / "export" / "scratch",
                   "--model", json.dumps(TINY), "--results-dir", root) == 0
    finally:
        os.umask(old)
    return root / "export" / "scratch", tokenizer


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_every_exported_file_is_readable_like_config_json(scratch_export):
    out, _ = scratch_export
    for sub in ("discriminator", "generator"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (out / sub).iterdir()}
        assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes  # safetensors writes 0600
        assert set(modes.values()) == {0o644}, modes


def test_atomic_outputs_get_the_umask_mode(tmp_path, umask_022):
    with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
        (tmp / "private.bin").write_bytes(b"x")
        os.chmod(tmp / "private.bin", 0o600)
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp / "run.sh", 0o700)
    assert stat.S_IMODE((tmp_path / "folder" / "private.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


def test_the_scratch_export_has_a_model_card_per_model(scratch_export):
    out, _ = scratch_export
    for sub, tag in (("discriminator", "feature-extraction"), ("generator", "fill-mask")):
        card = (out / sub / "README.md").read_text()
        meta = front_matter(card)
        assert meta["license"] == "apache-2.0" and meta["language"] == ["en"] and meta["pipeline_tag"] == tag
        assert {"electra", "electra-ds", "scratch"} <= set(meta["tags"])
        assert meta["electra_ds"]["source"] == "scratch" and meta["electra_ds"]["model"]["hidden_size"] == 32
        assert "random weights" in card and "AutoTokenizer.from_pretrained" in card
        assert "an uncased WordPiece vocabulary of" in card  # the fixture's tokenizer is a WordPiece one
    from electra_ds.pretraining.model_card import render  # the vocab stage's default: sentencepiece

    card = render("discriminator", scratch={"seed": 1, "model": TINY}, vocab_size=8000)
    assert "a cased sentencepiece vocabulary of 8000 pieces" in card and "WordPiece" not in card


def test_the_exported_tokenizer_loads_as_pretrainedtokenizerfast(scratch_export):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out, vocab = scratch_export
    config = json.loads((out / "discriminator" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # 4.x knows it; 5.x's TokenizersBackend it does not
    assert "is_local" not in config
    source = AutoTokenizer.from_pretrained(vocab)
    pair = ("The cat sat on the mat.", "A dog barked.")
    for loader in (AutoTokenizer, PreTrainedTokenizerFast):
        tok = loader.from_pretrained(out / "discriminator")
        assert tok.is_fast and len(tok) == len(source) and tok(*pair)["input_ids"] == source(*pair)["input_ids"]
        assert tok.mask_token == "[MASK]" and tok.pad_token_id == 0


SUMMARY = {"checkpoint_dir": "checkpoints", "tag": "step00001000", "steps": 1000, "world_size": 2, "zero_stage": 2,
           "precision": "bf16", "objective": "electra", "optimizer": "AdamW", "global_batch_size": 128,
           "tokens_per_example": 128, "flops": 3.2e15, "flops_per_token": 2.2e7, "mask_prob": 0.15,
           "temperature": 1.0, "seconds": 7200.0, "final_valid": {"disc_auc": 0.91, "gen_acc": 0.5},
           "model": {"vocab_size": 8000, "embedding_size": 128, "hidden_size": 256, "num_layers": 12, "num_heads": 4,
                     "intermediate_size": 1024, "max_position_embeddings": 512, "generator_fraction": 0.25}}
STATS = {"sources": {"hf:Skylion007/openwebtext": {"documents_out": 8_000_000}, "gutenberg": {"documents_out": 50}}}


def test_the_card_of_a_pretrained_model_records_how_it_was_made():
    card = render("discriminator", summary=SUMMARY, corpus_stats=STATS, vocab_size=8000, name="electra")
    meta = front_matter(card)
    assert meta["datasets"] == ["Skylion007/openwebtext"] and meta["pipeline_tag"] == "feature-extraction"
    assert meta["tags"][:2] == ["electra", "electra-ds"] and meta["license"] == "apache-2.0"
    pt = meta["electra_ds"]["pretraining"]
    assert (pt["objective"], pt["steps"], pt["global_batch_size"], pt["precision"]) == ("electra", 1000, 128, "bf16")
    assert pt["flops"] == 3.2e15 and pt["model"]["num_layers"] == 12 and pt["tokens_seen"] == 1000 * 128 * 128
    for text in ("1,000 steps of 128 sequences of 128 tokens", "3.2e+15 training FLOPs", "ZeRO stage 2",
                 "AutoModelForPreTraining.from_pretrained(path)", "AutoTokenizer.from_pretrained(path)",
                 "transformers>=4.57,<6", 'subfolder="generator"', "hf:Skylion007/openwebtext (8,000,000 documents)"):
        assert text in card, text
    generator = render("generator", summary=SUMMARY, corpus_stats=STATS, vocab_size=8000)
    assert front_matter(generator)["pipeline_tag"] == "fill-mask" and "AutoModelForMaskedLM" in generator


def test_the_summarys_checkpoint_dir_is_relative_to_the_summary(tmp_path):
    summary = tmp_path / "pretrain" / "electra" / "summary.json"
    assert checkpoint_dir_of({"checkpoint_dir": "checkpoints"}, summary) == summary.parent / "checkpoints"
    old = "/old/cluster/results/pretrain/electra/checkpoints"  # summaries written before: absolute, still read
    assert str(checkpoint_dir_of({"checkpoint_dir": old}, summary)) == old


# -- push to the Hub: everything up to the upload, with HfApi replaced ------------------------------------------

class FakeHfApi:
    calls: list = []
    fail = None

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        if FakeHfApi.fail:
            raise FakeHfApi.fail
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        FakeHfApi.calls.append(("upload_folder", kwargs["repo_id"], kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_creates_the_repo_and_uploads_the_export(scratch_export, fake_hub, tmp_path):
    out, _ = scratch_export
    record = tmp_path / "pushed.json"
    assert cli("push", "--export-dir", out, "--output", record, "--results-dir", tmp_path,
               "--push-to-hub", json.dumps({"repo_id": "me/tiny-electra", "private": False})) == 0
    (kind, repo, kwargs), *uploads = fake_hub.calls
    assert (kind, repo, kwargs["private"], kwargs["exist_ok"]) == ("create_repo", "me/tiny-electra", False, True)
    assert [(c[0], c[1], c[2]["folder_path"], c[2].get("path_in_repo")) for c in uploads] == [
        ("upload_folder", "me/tiny-electra", str(out / "discriminator"), None),
        ("upload_folder", "me/tiny-electra", str(out / "generator"), "generator")]
    assert json.loads(record.read_text())["url"] == "https://huggingface.co/me/tiny-electra"


def test_push_is_private_by_default_and_a_failure_is_one_clear_line(scratch_export, fake_hub, tmp_path, capsys):
    out, _ = scratch_export
    fake_hub.fail = OSError("401 Unauthorized\nmore detail")
    msg = cli_error(capsys, "push", "--export-dir", out, "--results-dir", tmp_path,
                    "--push-to-hub", json.dumps({"repo_id": "me/tiny-electra"}))
    assert fake_hub.calls[0][2]["private"] is True
    assert "me/tiny-electra" in msg and "401 Unauthorized" in msg and "hf auth login" in msg and "Fix:" in msg
    assert cli_error(capsys, "push", "--export-dir", out, "--results-dir", tmp_path).endswith(
        "Fix: set it, e.g. --push-to-hub '{\"repo_id\": \"me/my-electra\"}'")
