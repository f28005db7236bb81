"""Test helpers: a tiny exported ELECTRA discriminator folder (built without any network access),
and a raw TSV writer (runners and paths: helpers.py).

A WordPiece tokenizer is trained with the ``tokenizers`` library on the given text (special tokens
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, BERT-style pair template with token types), wrapped in
``PreTrainedTokenizerFast`` and saved next to a randomly initialised tiny ``ElectraForPreTraining``
- the same layout the export stage writes.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHARED_GLUE_TEXT = [("CoLA", "train.tsv", 3), ("RTE", "train.tsv", 1), ("RTE", "train.tsv", 2),
                    ("MRPC", "train.tsv", 3), ("STS-B", "train.tsv", 7)]


def glue_texts(glue_dir: Path, max_lines: int = 2000) -> list:
    """Some sentences from the real GLUE files to train the tiny vocabulary on."""
    texts = []
    for task, name, column in SHARED_GLUE_TEXT:
        path = Path(glue_dir) / task / name
        if not path.is_file():
            continue
        with open(path, encoding="utf-8-sig") as f:
            for i, line in enumerate(f):
                fields = line.rstrip("\n").split("\t")
                if 0 < i <= max_lines and len(fields) > column:
                    texts.append(fields[column])
    return texts


def build_tiny_model_dir(path, texts, *, vocab_size: int = 1000, num_layers: int = 2, seed: int = 0,
                         alibi: bool = False) -> Path:
    """Write tokenizer + tiny random ElectraForPreTraining (hidden 32, 2 heads) into ``path`` (``alibi``: marked
    as trained with ALiBi attention biases, as an export of ``attention_bias: alibi``)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import ElectraConfig, ElectraForPreTraining, PreTrainedTokenizerFast

    path = Path(path)
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                       special_tokens=SPECIAL_TOKENS))
    assert [backend.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    torch.manual_seed(seed)
    config = ElectraConfig(vocab_size=backend.get_vocab_size(), embedding_size=32, hidden_size=32,
                           num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=128, pad_token_id=0)
    if alibi:
        config.alibi = True
    ElectraForPreTraining(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_tsv(path, lines: list) -> Path:
    """Write raw tab-separated lines (lists of fields or strings) exactly as given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(("\t".join(map(str, line)) if not isinstance(line, str) else line) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def tiny_batch(rows=8, length=40, pad_from=30, seed=0, vocab=300):
    """Random token rows with [CLS] first, a [SEP] at 15 and at the end; half the rows padded from ``pad_from``."""
    import torch

    from electra_ds import CLS_ID, PAD_ID, SEP_ID

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    ids[:, 0] = CLS_ID
    ids[:, 15] = SEP_ID
    ids[:, length - 1] = SEP_ID
    ids[: rows // 2, pad_from:] = PAD_ID
    ids[: rows // 2, pad_from - 1] = SEP_ID
    return ids
