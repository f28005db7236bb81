"""Fine-tuning wing: GLUE tasks, the classifier, one (task, seed) fine-tuning job, the frozen-feature
linear probe, and the evaluation that aggregates them (tables, report, plots, GLUE submission). Imports nothing
from pretraining: it reads the exported Hugging Face model.
"""
