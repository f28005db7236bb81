"""Shards throughput: the shards stage (split, tokenize, pack, write) against raw sentencepiece batch
encoding of the same lines, with as many encode threads as the stage has worker processes. The LAST
line is the throughput ratio shards / raw encoding (goal >= 0.8: packing and writing cost at most a
quarter).

    python benchmarks/shards_throughput.py [--threads N] [--packing electra|plain]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import Timer, documents


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--packing", choices=["electra", "plain"], default="electra")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs of each side (the "
                        "first shards run also starts the worker processes)")
    args = parser.parse_args()
    import sentencepiece as spm

    from electra_ds.data.shards import write_shards
    from electra_ds.data.text import split_sentences
    from electra_ds.data.vocab import sample_sentences, train_sentencepiece

    docs, what = documents()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, _, _ = sample_sentences(docs, 50_000, seed=0)
        with Timer() as t_vocab:
            train_sentencepiece(train, tmp / "spm", vocab_size=args.vocab_size, threads=args.threads)
        sp = spm.SentencePieceProcessor(model_file=str(tmp / "spm.model"))
        lines = [line for d in docs for line in split_sentences(d["text"])]
        chars = sum(map(len, lines))
        print(f"data: {what}: {len(lines)} lines, {chars / 1e6:.1f} M characters; vocab {args.vocab_size} "
              f"(trained in {t_vocab.seconds:.1f} s); {args.threads} threads; packing {args.packing}")
        raw, shards = [], []
        for r in range(args.repeat):
            with Timer() as t_raw:
                encoded = sp.encode(lines, num_threads=args.threads)
            raw.append(t_raw.seconds)
            tokens = sum(map(len, encoded))
            del encoded
            out = tmp / f"shards-{r}"
            out.mkdir()
            with Timer() as t_shards:
                result = write_shards(docs, sp, out, max_seq_len=args.max_seq_len, valid_fraction=0.01,
                                      workers=args.threads, packing=args.packing)
            shards.append(t_shards.seconds)
        print("runs (s): raw " + " ".join(f"{t:.2f}" for t in raw) + "; shards " + " ".join(f"{t:.2f}" for t in shards))
        t_raw, t_sh = min(raw), min(shards)
        examples = sum(s["examples"] for s in result["splits"].values())
        print(f"raw sentencepiece encode: {t_raw:6.2f} s  {tokens / t_raw / 1e6:6.2f} M tokens/s")
        print(f"shards stage:             {t_sh:6.2f} s  {tokens / t_sh / 1e6:6.2f} M tokens/s  "
              f"({examples} examples of {args.max_seq_len})")
        print(f"packing + writing share of the shards time: {max(0.0, t_sh - t_raw) / t_sh:.2f}")
        print(f"ratio shards / raw encode throughput: {t_raw / t_sh:.2f}x")


if __name__ == "__main__":
    main()
