"""Vocab stage: train a sentencepiece vocabulary and save it as a Hugging Face tokenizer directory.

The sentencepiece model uses ELECTRA's special ids ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; the
last four besides [UNK] are control symbols that plain text never produces). It is converted with
transformers' own sentencepiece converter into a ``tokenizers`` fast tokenizer that encodes like
sentencepiece, given BERT-style ``[CLS] A [SEP] B [SEP]`` templates with token type ids, and saved
with ``save_pretrained`` next to ``spm.model``/``spm.vocab`` and ``vocab_stats.json``.

Training sentences are the documents' lines (long lines cut at sentence ends), sampled by reservoir
sampling with ``--seed``; about 2% of the lines are held out to measure coverage, the unknown-token
rate, pieces per word and agreement of the fast tokenizer with sentencepiece.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

from electra_ds import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from electra_ds.text import split_sentences
from electra_ds.errors import UserError
from electra_ds.settings import add_settings
from electra_ds.fileio import atomic_path
from electra_ds.progress import Progress
from electra_ds import progress

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.02
MAX_HELDOUT_LINES = 10_000
MAX_AGREEMENT_LINES = 2_000
MODEL_MAX_LENGTH = 512
# prose agrees on > 99.9% of lines; runs of one symbol ("=====") can tie in unigram scores and break
# differently, which costs a little on code-heavy text such as the demo corpus
MIN_AGREEMENT = 0.995
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def sample_sentences(documents, sample_size: int, seed: int = 0,
                     heldout_fraction: float = HELDOUT_FRACTION) -> tuple[list[str], list[str], int]:
    """(training sample, held-out lines, total lines): reservoir samples, deterministic for a seed."""
    rng = random.Random(seed)
    train: list[str] = []
    heldout: list[str] = []
    n_train = n_heldout = 0
    for doc in documents:
        for line in split_sentences(doc["text"]):
            if rng.random() < heldout_fraction:
                n_heldout += 1
                _reservoir_add(heldout, line, n_heldout, MAX_HELDOUT_LINES, rng)
            else:
                n_train += 1
                _reservoir_add(train, line, n_train, sample_size, rng)
    return train, heldout, n_train + n_heldout


def _reservoir_add(reservoir: list, item, seen: int, size: int, rng: random.Random) -> None:
    if len(reservoir) < size:
        reservoir.append(item)
    else:
        j = rng.randrange(seen)
        if j < size:
            reservoir[j] = item


def train_sentencepiece(lines: list[str], model_prefix: Path, *, vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 0.9999, byte_fallback: bool = False, threads: int = 1,
                        seed: int = 0, tracker=None) -> None:
    """Train ``<model_prefix>.model``/``.vocab`` with ELECTRA's special ids; UserError if it cannot.

    Progress: the lines fed to the trainer are counted; then, while sentencepiece trains (no callback),
    a heartbeat says it is still running."""
    import sentencepiece as spm


    spm.set_random_generator_seed(seed)
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    phases: list = []

    def feed():
        with Progress("vocab: loading sentences into sentencepiece", total=len(lines), unit="lines",
                      tracker=tracker, logger=log) as loading:
            for line in lines:
                loading.update(1, len(line.encode("utf-8")))
                yield line
        phases.append(Progress(f"vocab: training the {model_type} model (vocab {vocab_size})", unit="lines",
                               heartbeat=True, logger=log))

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=feed(), model_prefix=str(model_prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, byte_fallback=byte_fallback,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=CLS_ID, eos_id=SEP_ID,
            pad_piece=pad, unk_piece=unk, bos_piece=cls, eos_piece=sep, control_symbols=[mask],
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=threads, minloglevel=2)
        for phase in phases:
            phase.close()
    except RuntimeError as exc:
        for phase in phases:
            phase.__exit__(RuntimeError, exc, None)
        too_high = _TOO_HIGH.search(str(exc))
        if too_high:
            raise UserError(f"--vocab-size {vocab_size} is more than the training text supports: sentencepiece "
                            f"allows at most {too_high.group(2)} here", field="vocab.vocab_size",
                            fix=f"set vocab.vocab_size (--vocab-size) to {too_high.group(2)} or less, "
                                "or train on more text") from None
        raise UserError(f"sentencepiece training failed: {str(exc).split('] ')[-1]}", field="vocab",
                        fix="check vocab.vocab_size and vocab.character_coverage") from None
    # the trainer records its temporary output path in the model; store a fixed name (reproducible bytes)
    from transformers.convert_slow_tokenizer import import_protobuf

    model = Path(f"{model_prefix}.model")
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model.read_bytes())
    proto.trainer_spec.model_prefix = "spm"
    model.write_bytes(proto.SerializeToString())


def fast_tokenizer_from_spm(model_file: Path):
    """A transformers fast tokenizer (``tokenizers`` backend) that encodes like the sentencepiece model."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type == 1:  # unigram: (piece, score) list
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:  # bpe: piece -> id; merges follow the piece scores
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    backend.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, CLS_ID), (sep, SEP_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, pad_token=pad, cls_token=cls, sep_token=sep, mask_token=mask,
        model_max_length=MODEL_MAX_LENGTH, model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def vocab_statistics(sp, lines: list[str], threads: int = 1) -> dict:
    """Coverage (non-space characters not inside [UNK] pieces), unknown-token rate, pieces per word."""
    chars = unk_chars = pieces = unk_pieces = words = 0
    for line, encoded in zip(lines, sp.encode(lines, return_type="proto", num_threads=threads)):
        words += len(line.split())
        chars += sum(not c.isspace() for c in line)
        for piece in encoded.pieces:
            pieces += 1
            if piece.id == UNK_ID:
                unk_pieces += 1
                unk_chars += sum(not c.isspace() for c in piece.surface)
    return {
        "coverage": 1 - unk_chars / chars if chars else 0.0,
        "unknown_token_rate": unk_pieces / pieces if pieces else 0.0,
        "pieces_per_word": pieces / words if words else 0.0,
        "eval_lines": len(lines),
    }


def fast_agreement(sp, tokenizer, lines: list[str], threads: int = 1) -> float:
    """Fraction of lines the fast tokenizer encodes to exactly sentencepiece's ids."""
    if not lines:
        return 1.0
    ours = tokenizer(lines, add_special_tokens=False)["input_ids"]
    theirs = sp.encode(lines, num_threads=threads)
    return sum(a == b for a, b in zip(ours, theirs)) / len(lines)


SETTINGS = {"vocab": ("vocab_size", "model_type", "sample_sentences", "character_coverage", "byte_fallback", "threads"),
            "": ("seed",)}


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="documents JSONL (dedup output)")
    parser.add_argument("--output-dir", required=True, help="tokenizer directory to write")
    add_settings(parser, SETTINGS)


def run(args, tracker) -> None:
    import sentencepiece as spm

    if not Path(args.input).is_file():
        raise UserError("input documents not found", path=args.input, fix="run the dedup stage first")
    if args.vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(f"--vocab-size {args.vocab_size} is too small", field="vocab.vocab_size",
                        fix="use a few thousand (ELECTRA uses 30522)")
    params = {k: getattr(args, k) for k in ("vocab_size", "model_type", "sample_sentences", "character_coverage",
                                            "byte_fallback", "seed", "threads")}
    tracker.log_params(params)

    with progress.Progress("vocab: sampling lines", unit="docs", total_bytes=progress.file_bytes(args.input),
                           tracker=tracker, logger=log) as reading:
        train, heldout, total = sample_sentences(progress.read_jsonl(args.input, reading), args.sample_sentences,
                                                 args.seed)
    if not train:
        raise UserError("no text lines to train on", path=args.input, fix="check the corpus and dedup outputs")
    log.info("training %s vocab of %d on %d of %d lines", args.model_type, args.vocab_size, len(train), total)
    with atomic_path(args.output_dir, is_dir=True) as tmp:
        train_sentencepiece(train, tmp / "spm", vocab_size=args.vocab_size, model_type=args.model_type,
                            character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
                            threads=args.threads, seed=args.seed, tracker=tracker)
        sp = spm.SentencePieceProcessor(model_file=str(tmp / "spm.model"))
        tokenizer = fast_tokenizer_from_spm(tmp / "spm.model")
        if len(tokenizer) != sp.get_piece_size():
            raise RuntimeError(f"fast tokenizer has {len(tokenizer)} tokens, sentencepiece {sp.get_piece_size()}")
        tokenizer.save_pretrained(str(tmp))
        eval_lines = heldout or train[:MAX_HELDOUT_LINES]
        stats = {**params, "vocab_size": sp.get_piece_size(), "training_lines": len(train), "total_lines": total,
                 "eval_on": "heldout" if heldout else "training sample",
                 **vocab_statistics(sp, eval_lines, args.threads),
                 "fast_tokenizer_agreement": fast_agreement(sp, tokenizer, eval_lines[:MAX_AGREEMENT_LINES],
                                                            args.threads)}
        if stats["fast_tokenizer_agreement"] < MIN_AGREEMENT:
            log.warning("the fast tokenizer matches sentencepiece on only %.2f%% of lines",
                        100 * stats["fast_tokenizer_agreement"])
        (tmp / "vocab_stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tracker.log_metrics({k: v for k, v in stats.items() if k not in params or k == "vocab_size"})
    tracker.log_artifact(Path(args.output_dir) / "vocab_stats.json")
    log.info("vocab %d: coverage %.5f, unk rate %.5f, %.2f pieces/word, fast agreement %.4f -> %s",
             stats["vocab_size"], stats["coverage"], stats["unknown_token_rate"],
             stats["pieces_per_word"], stats["fast_tokenizer_agreement"], args.output_dir)
