"""Pretraining wing: the ELECTRA model (generator + discriminator), masking, the DeepSpeed trainer,
checkpoints, the launcher and the Hugging Face export. Reads shards through ``data.shard_format``.
"""
