"""Model shapes and the one FLOPs formula, without torch (the Snakefile uses them to plan a study).

``ModelShape`` is the discriminator's shape; the generator is derived from it with
``generator_fraction`` (:func:`generator_dims`). :func:`flops_per_token` counts the training FLOPs
(forward + backward = 3 x forward, matrix multiplies only) that one token position costs under an
objective; pretraining FLOPs = that x steps x global batch x sequence length. It is the number by
which the equal-compute study matches ELECTRA and the MLM baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ModelShape:
    """Discriminator shape; the generator is derived from it with ``generator_fraction``."""

    vocab_size: int
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 12
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    generator_fraction: float = 0.25
    generator_layers: float = 1.0
    dropout: float = 0.1
    attn_implementation: str = "sdpa"

    def to_dict(self) -> dict:
        return asdict(self)


def generator_dims(shape: ModelShape) -> tuple[int, int, int]:
    """(hidden size, heads, intermediate size) of the generator: ``generator_fraction`` of the discriminator's."""
    f = shape.generator_fraction
    heads = max(1, round(shape.num_heads * f))
    hidden = max(heads, round(shape.hidden_size * f / heads) * heads)
    return hidden, heads, max(1, round(shape.intermediate_size * f))


def _encoder_flops(hidden: int, intermediate: int, layers: int, embedding: int, seq_len: int) -> float:
    """Forward FLOPs per token of one encoder: projections, attention scores and values, feed-forward."""
    per_layer = 2 * (4 * hidden ** 2 + 2 * hidden * intermediate) + 2 * 2 * seq_len * hidden
    projection = 2 * embedding * hidden if embedding != hidden else 0
    return layers * per_layer + projection


def flops_per_token(shape: ModelShape, seq_len: int, objective: str = "electra", mask_prob: float = 0.15) -> float:
    """Training FLOPs per token position (3 x forward) for ``objective``.

    electra/adversarial: discriminator encoder + its head at every position, generator encoder at every
    position, the generator's MLM head (dense + vocabulary projection) at the masked fraction;
    mlm: one discriminator-sized encoder and its MLM head at the masked fraction.
    """
    e, h, v = shape.embedding_size, shape.hidden_size, shape.vocab_size
    disc = _encoder_flops(h, shape.intermediate_size, shape.num_layers, e, seq_len)
    if objective == "mlm":
        return 3.0 * (disc + mask_prob * (2 * h * e + 2 * e * v))
    g_hidden, _, g_inter = generator_dims(shape)
    gen = _encoder_flops(g_hidden, g_inter, shape.num_layers, e, seq_len)
    gen_head = mask_prob * (2 * g_hidden * e + 2 * e * v)
    disc_head = 2 * h * h + 2 * h
    return 3.0 * (disc + gen + gen_head + disc_head)


def pretraining_flops(shape: ModelShape, seq_len: int, steps: int, global_batch: int, objective: str = "electra",
                      mask_prob: float = 0.15) -> float:
    return flops_per_token(shape, seq_len, objective, mask_prob) * steps * global_batch * seq_len
