"""The vocab stage's output as the other stages read it: the sentencepiece model (``spm.model``) or the WordPiece
``tokenizer.json``, loaded and checked for ELECTRA's special ids. The shards packer encodes with it; pretraining
reads which pieces start a word (whole-word masking) without importing the packer."""

from __future__ import annotations

import json
from pathlib import Path

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from electra_ds.common.errors import UserError
from electra_ds.data.shard_format import tokenizer_file


def load_sentencepiece(tokenizer_dir):
    """The vocab stage's ``spm.model``, checked for ELECTRA's special ids."""
    import sentencepiece as spm

    model = Path(tokenizer_dir) / "spm.model"
    if not model.is_file():
        raise UserError("no spm.model in the tokenizer directory", path=model, fix="run the vocab stage first")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model))
    except (RuntimeError, OSError) as exc:  # sentencepiece's parse error of an empty or garbled model
        raise UserError(f"is not a sentencepiece model ({str(exc).strip() or type(exc).__name__})", path=model,
                        fix="rerun the vocab stage") from None
    got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.piece_to_id(SPECIAL_TOKENS[MASK_ID]))
    if got != (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID):
        raise UserError(f"special token ids {got} are not [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4", path=model,
                        fix="use a tokenizer made by the vocab stage")
    return sp


class WordPieceEncoder:
    """The vocab stage's WordPiece ``tokenizer.json`` with the two methods of sentencepiece's processor the packer
    uses (``encode``, ``get_piece_size``). Ids come without [CLS]/[SEP]; a literal "[MASK]" (or other special
    token) in the text is encoded as text, as sentencepiece treats its control symbols. Pickled as its JSON (the
    shards workers build their own), one encoding thread per process as the sentencepiece path."""

    def __init__(self, tokenizer_json):
        self.json = Path(tokenizer_json).read_text(encoding="utf-8")
        self._tok = None

    def __getstate__(self):
        return {"json": self.json, "_tok": None}

    @property
    def tok(self):
        if self._tok is None:
            import os

            from tokenizers import Tokenizer

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._tok = Tokenizer.from_str(self.json)
            self._tok.encode_special_tokens = True
            self._tok.no_truncation()
            self._tok.no_padding()
        return self._tok

    def encode(self, lines: list[str], num_threads: int = 1) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(lines, add_special_tokens=False)]

    def get_piece_size(self) -> int:
        return self.tok.get_vocab_size()


def load_encoder(tokenizer_dir):
    """The vocab stage's encoder: sentencepiece (``spm.model``) or WordPiece (``tokenizer.json`` without
    ``spm.model``), checked for ELECTRA's special ids."""
    path = tokenizer_file(tokenizer_dir)
    if path.name == "spm.model":
        return load_sentencepiece(tokenizer_dir)
    if not path.is_file():
        raise UserError("no spm.model or tokenizer.json in the tokenizer directory", path=tokenizer_dir,
                        fix="run the vocab stage first")
    encoder = WordPieceEncoder(path)
    try:
        kind = json.loads(encoder.json).get("model", {}).get("type")
        encoder.tok  # parses it
    except Exception as exc:  # json's ValueError, the tokenizers library's plain Exception
        raise UserError(f"cannot load the tokenizer ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                        path=path, fix="rerun the vocab stage") from None
    if kind != "WordPiece":
        raise UserError("tokenizer.json is neither the vocab stage's sentencepiece nor its WordPiece vocabulary",
                        path=path, fix="use a tokenizer directory made by the vocab stage")
    got = tuple(encoder.tok.token_to_id(t) for t in SPECIAL_TOKENS)
    if got != (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID):
        raise UserError(f"special token ids {got} are not [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4", path=path,
                        fix="use a tokenizer made by the vocab stage")
    return encoder
