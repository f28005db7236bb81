"""Vocab stage: train a sentencepiece (or WordPiece) vocabulary and save it as a Hugging Face tokenizer directory.

The sentencepiece model uses ELECTRA's special ids ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; the
last four besides [UNK] are control symbols that plain text never produces). It is converted with
transformers' own sentencepiece converter into a ``tokenizers`` fast tokenizer that encodes like
sentencepiece, given BERT-style ``[CLS] A [SEP] B [SEP]`` templates with token type ids, and saved
with ``save_pretrained`` next to ``spm.model``/``spm.vocab`` and ``vocab_stats.json``.

Training sentences are the documents' lines (long lines cut at sentence ends), sampled by reservoir
sampling with ``--seed``; about 2% of the lines are held out to measure coverage, the unknown-token
rate, pieces per word and agreement of the fast tokenizer with sentencepiece.

``--tokenizer wordpiece`` is the paper's kind of vocabulary (BERT's uncased WordPiece): lower-cased, accents
stripped, BERT's pre-tokenizer (whitespace and punctuation), ``##`` continuations; trained with the ``tokenizers``
library on the same sample, or loaded from a given ``vocab.txt`` (``--vocab-file``, e.g. BERT's uncased 30522),
whose five special tokens are moved to ELECTRA's ids 0-4 (the other tokens keep their order). The directory then
holds ``tokenizer.json`` (the shards stage encodes with it), ``vocab.txt`` in that id order, and no ``spm.model``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

from electra_ds import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from electra_ds.common import progress
from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path
from electra_ds.common.progress import Progress
from electra_ds.common.settings import add_settings
from electra_ds.data.text import split_sentences

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
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type == 1:  # unigram: (piece, score) list
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:  # bpe: piece -> id; merges follow the piece scores
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    return _hf_tokenizer(SpmConverter.build_tokenizer_from_spm_proto(proto, vocab))


def _hf_tokenizer(backend):
    """A ``tokenizers`` backend as a transformers fast tokenizer with BERT's ``[CLS] A [SEP] B [SEP]`` templates
    (token type ids) and ELECTRA's special tokens."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    backend.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, CLS_ID), (sep, SEP_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, pad_token=pad, cls_token=cls, sep_token=sep, mask_token=mask,
        model_max_length=MODEL_MAX_LENGTH, model_input_names=["input_ids", "token_type_ids", "attention_mask"])


# -- WordPiece (the paper's BERT uncased vocabulary) -------------------------------------------------------------
WORDPIECE_PREFIX = "##"


def _wordpiece_backend(vocab: dict | None = None):
    """BERT's uncased pipeline: clean text, split CJK characters, lower-case and strip accents, split on whitespace
    and punctuation, then WordPiece with ``##`` continuations (a word it cannot spell is one [UNK])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    unk = SPECIAL_TOKENS[UNK_ID]
    model = (models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix=WORDPIECE_PREFIX) if vocab
             else models.WordPiece(unk_token=unk, continuing_subword_prefix=WORDPIECE_PREFIX))
    backend = Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                                    lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    return backend


def train_wordpiece(lines: list[str], vocab_size: int):
    """A WordPiece ``tokenizers`` backend trained on ``lines``; the special tokens take ids 0-4, the other tokens
    follow in sorted order (the trainer breaks ties between merges of equal count in a different order from run to
    run, which changes ids, never the tokens or how a text splits: WordPiece matches the longest token whatever its
    id)."""
    from tokenizers import trainers

    backend = _wordpiece_backend()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        continuing_subword_prefix=WORDPIECE_PREFIX, show_progress=False)
    backend.train_from_iterator(lines, trainer, length=len(lines))
    tokens = sorted(t for t in backend.get_vocab() if t not in SPECIAL_TOKENS)
    return _wordpiece_backend({t: i for i, t in enumerate([*SPECIAL_TOKENS, *tokens])})


def load_wordpiece_vocab(path):
    """The WordPiece backend of a BERT-style ``vocab.txt`` (one token a line), with [PAD] [UNK] [CLS] [SEP] [MASK]
    moved to ids 0-4 and the other tokens in the file's order after them; UserError for a file that lacks one of
    them or repeats a token."""
    path = Path(path)
    if not path.is_file():
        raise UserError("vocabulary file not found", path=path, field="vocab.vocab_file",
                        fix="point vocab.vocab_file at a BERT-style vocab.txt (one token a line)")
    tokens = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise UserError(f"has no {' '.join(missing)}", path=path, field="vocab.vocab_file",
                        fix=f"use a vocab.txt with all of {' '.join(SPECIAL_TOKENS)} (BERT's has them)")
    if len(set(tokens)) != len(tokens):
        repeated = next(t for t in tokens if tokens.count(t) > 1)
        raise UserError(f"repeats the token {repeated!r}", path=path, field="vocab.vocab_file",
                        fix="one token a line, each once")
    order = list(SPECIAL_TOKENS) + [t for t in tokens if t not in SPECIAL_TOKENS]
    return _wordpiece_backend({token: i for i, token in enumerate(order)})


def fast_tokenizer_from_wordpiece(backend):
    """A transformers fast tokenizer of a WordPiece backend; the special tokens are never split or normalised."""
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return _hf_tokenizer(backend)


def wordpiece_statistics(backend, lines: list[str]) -> dict:
    """As :func:`vocab_statistics` for WordPiece: coverage (non-space characters not inside [UNK] words), the
    unknown-token rate and pieces per word (whitespace words)."""
    chars = unk_chars = pieces = unk_pieces = words = 0
    for line, encoded in zip(lines, backend.encode_batch(lines, add_special_tokens=False)):
        words += len(line.split())
        chars += sum(not c.isspace() for c in line)
        pieces += len(encoded.ids)
        for token_id, (start, end) in zip(encoded.ids, encoded.offsets):
            if token_id == UNK_ID:
                unk_pieces += 1
                unk_chars += sum(not c.isspace() for c in line[start:end])
    return {
        "coverage": 1 - unk_chars / chars if chars else 0.0,
        "unknown_token_rate": unk_pieces / pieces if pieces else 0.0,
        "pieces_per_word": pieces / words if words else 0.0,
        "eval_lines": len(lines),
    }


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


SETTINGS = {"vocab": ("tokenizer", "vocab_file", "vocab_size", "model_type", "sample_sentences", "character_coverage",
                      "byte_fallback", "threads"),
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
    if args.vocab_file and args.tokenizer != "wordpiece":
        raise UserError("vocab.vocab_file is a WordPiece vocabulary", field="vocab.vocab_file",
                        fix="set vocab.tokenizer: wordpiece, or leave vocab_file null to train sentencepiece")
    params = {k: getattr(args, k) for k in ("tokenizer", "vocab_file", "vocab_size", "model_type", "sample_sentences",
                                            "character_coverage", "byte_fallback", "seed", "threads")}
    tracker.log_params(params)

    with progress.Progress("vocab: sampling lines", unit="docs", total_bytes=progress.file_bytes(args.input),
                           tracker=tracker, logger=log) as reading:
        train, heldout, total = sample_sentences(progress.read_jsonl(args.input, reading), args.sample_sentences,
                                                 args.seed)
    if not train:
        raise UserError("no text lines to train on", path=args.input, fix="check the corpus and dedup outputs")
    if args.tokenizer == "wordpiece":
        _write_wordpiece(args, tracker, params, train, heldout, total)
        return
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


def _write_wordpiece(args, tracker, params: dict, train: list, heldout: list, total: int) -> None:
    """The WordPiece directory: tokenizer.json + tokenizer_config.json (AutoTokenizer), vocab.txt, vocab_stats.json."""
    if args.vocab_file:
        log.info("loading the WordPiece vocabulary %s", args.vocab_file)
        backend = load_wordpiece_vocab(args.vocab_file)
    else:
        log.info("training a WordPiece vocab of %d on %d of %d lines", args.vocab_size, len(train), total)
        with Progress(f"vocab: training WordPiece (vocab {args.vocab_size})", unit="lines", heartbeat=True,
                      logger=log):
            backend = train_wordpiece(train, args.vocab_size)
    got = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
    if got != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"WordPiece special token ids {got}, expected 0-4")
    with atomic_path(args.output_dir, is_dir=True) as tmp:
        tokenizer = fast_tokenizer_from_wordpiece(backend)
        tokenizer.save_pretrained(str(tmp))
        backend.model.save(str(tmp))  # vocab.txt, in id order
        eval_lines = heldout or train[:MAX_HELDOUT_LINES]
        stats = {**params, "vocab_size": backend.get_vocab_size(), "training_lines": len(train), "total_lines": total,
                 "eval_on": "heldout" if heldout else "training sample", **wordpiece_statistics(backend, eval_lines)}
        (tmp / "vocab_stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tracker.log_metrics({k: v for k, v in stats.items()
                         if isinstance(v, (int, float)) and (k not in params or k == "vocab_size")})
    tracker.log_artifact(Path(args.output_dir) / "vocab_stats.json")
    log.info("WordPiece vocab %d: coverage %.5f, unk rate %.5f, %.2f pieces/word -> %s", stats["vocab_size"],
             stats["coverage"], stats["unknown_token_rate"], stats["pieces_per_word"], args.output_dir)
