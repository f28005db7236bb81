"""Data wing: sources -> documents -> deduplicated documents -> vocabulary -> packed token shards, and the
offline probe tasks. Imports nothing from pretraining or fine-tuning.
"""
