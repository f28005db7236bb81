"""Pipeline wing: what the Snakefile and the command line use to plan, check, prefetch and watch a run (the
config, the study's models, cross-field constraints, SLURM preflight, status). The one wing besides ``cli``
that may import every other.
"""
