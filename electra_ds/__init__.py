"""electra-ds: pretrain ELECTRA encoders from raw text to GLUE scores.

Each pipeline stage lives in its own module and is reachable as ``electra-ds <stage>``:

    corpus    electra_ds.data.corpus    sources -> normalised UTF-8 documents (JSONL)
    dedup     electra_ds.data.dedup     exact duplicate removal -> kept documents + counts
    vocab     electra_ds.data.vocab     sentencepiece -> Hugging Face tokenizer directory
    shards    electra_ds.data.shards    tokenize + pack -> binary shards + index
    probes    electra_ds.data.probes    offline probe tasks (GLUE TSV layout) from held-out documents
    pretrain  electra_ds.pretraining.pretrain  generator + discriminator through DeepSpeed -> checkpoints
    export    electra_ds.pretraining.export    checkpoint -> Hugging Face discriminator / generator
    finetune  electra_ds.finetuning.finetune  one (task, seed) fine-tuning job -> dev metrics + test predictions
    linear-probe electra_ds.finetuning.linear_probe  frozen features of every layer -> logistic regression dev accuracy
    evaluate  electra_ds.finetuning.evaluate  aggregate -> results table (JSON + Markdown)
"""

__version__ = "0.1.0"

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
