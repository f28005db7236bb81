"""Model shapes and the one FLOPs formula, without torch (the Snakefile uses them to plan a study).

``ModelShape`` is the discriminator's shape; the generator is derived from it with
``generator_fraction`` and ``generator_layers`` (:func:`generator_dims`, :func:`generator_num_layers`).
:func:`flops_per_token` counts the training FLOPs (forward + backward = 3 x forward, matrix multiplies only)
that one token position costs under an objective; pretraining FLOPs = that x steps x global batch x sequence
length. It is the number by which the equal-compute study matches ELECTRA and the MLM baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ModelShape:
    """Discriminator shape; the generator is derived from it with ``generator_fraction`` (width) and
    ``generator_layers`` (depth, a fraction of ``num_layers``)."""

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
    attn_implementation: str = "auto"  # model.resolve_attention: eager on CPU, sdpa elsewhere
    attention_bias: str = "none"  # "alibi": electra_ds.common.alibi (a fixed distance penalty per head)

    def to_dict(self) -> dict:
        return asdict(self)


def generator_dims(shape: ModelShape) -> tuple[int, int, int]:
    """(hidden size, heads, intermediate size) of the generator, by google-research/electra's rule
    (run_pretraining.get_generator_config): hidden = round(hidden x generator_fraction), 64 dimensions per
    head (heads = max(1, hidden // 64)), intermediate = 4 x the generator's hidden.

    The rule depends only on the discriminator's hidden size. electra-ds first scaled the discriminator's heads
    and intermediate size by the fraction instead; both rules give the same generators for ELECTRA-Small
    (256 wide, 4 heads, 1024) and -Base (768/12/3072) at 1/4, for Base at 1/3 and for the 128/2/512 demo
    shape at 1/4. They differ where the discriminator's intermediate size is not 4 x hidden (64/4/128 at 1/4:
    now 16/1/64, was 16/1/32; 32/2/64 at 1/2: 16/1/64, was 16/1/32) and by round-off: Small at 1/3 or 0.333
    85/1/340 (was 341), Base at 0.333 256/4/1024 (was 1023). Where the official head count does not divide
    the hidden size (the official code stops with an error there; e.g. Large at 1/3: 341 and 5 heads) the
    hidden size is rounded to the nearest multiple of the head count (340).
    """
    hidden = max(1, int(round(shape.hidden_size * shape.generator_fraction)))
    heads = max(1, hidden // 64)
    hidden = max(heads, int(round(hidden / heads)) * heads)
    return hidden, heads, 4 * hidden


def generator_num_layers(shape: ModelShape) -> int:
    """The generator's depth: round(num_layers x generator_layers), at least one (official generator_layers)."""
    return max(1, int(round(shape.num_layers * shape.generator_layers)))


def check_uniform_generator(uniform_generator: bool, objective: str, embedding_sharing: str) -> None:
    """ValueError when ``uniform_generator`` (no generator is built) meets a setting that needs a generator."""
    if uniform_generator and (objective != "electra" or embedding_sharing == "gdes"):
        raise ValueError("uniform_generator builds no generator: it needs objective electra and embedding_sharing "
                         f"es or none, not objective {objective!r} with embedding_sharing {embedding_sharing!r}")


def encoder_flops(hidden: int, intermediate: int, layers: int, embedding: int, seq_len: int) -> float:
    """Forward FLOPs per token of one encoder: projections, attention scores and values, feed-forward."""
    per_layer = 2 * (4 * hidden ** 2 + 2 * hidden * intermediate) + 2 * 2 * seq_len * hidden
    projection = 2 * embedding * hidden if embedding != hidden else 0
    return layers * per_layer + projection


def flops_per_token(shape: ModelShape, seq_len: int, objective: str = "electra", mask_prob: float = 0.15,
                    uniform_generator: bool = False) -> float:
    """Training FLOPs per token position (3 x forward) for ``objective``.

    electra/adversarial: discriminator encoder + its head at every position, generator encoder (its own width
    and depth, :func:`generator_dims`, :func:`generator_num_layers`) at every position, the generator's MLM
    head (dense + vocabulary projection) at the masked fraction;
    mlm: one discriminator-sized encoder and its MLM head at the masked fraction;
    ``uniform_generator``: no generator (the discriminator's terms only).
    """
    e, h, v = shape.embedding_size, shape.hidden_size, shape.vocab_size
    disc = encoder_flops(h, shape.intermediate_size, shape.num_layers, e, seq_len)
    if objective == "mlm":
        return 3.0 * (disc + mask_prob * (2 * h * e + 2 * e * v))
    disc_head = 2 * h * h + 2 * h
    if uniform_generator:
        return 3.0 * (disc + disc_head)
    g_hidden, _, g_inter = generator_dims(shape)
    gen = encoder_flops(g_hidden, g_inter, generator_num_layers(shape), e, seq_len)
    gen_head = mask_prob * (2 * g_hidden * e + 2 * e * v)
    return 3.0 * (disc + gen + gen_head + disc_head)


def pretraining_flops(shape: ModelShape, seq_len: int, steps: int, global_batch: int, objective: str = "electra",
                      mask_prob: float = 0.15, uniform_generator: bool = False) -> float:
    return flops_per_token(shape, seq_len, objective, mask_prob, uniform_generator) * steps * global_batch * seq_len
