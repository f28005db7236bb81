"""The model card (``README.md``) the export stage writes beside each exported model.

A Hugging Face Hub card: a YAML metadata block (license, language, datasets, pipeline tag, tags, and the pretraining
settings under ``electra_ds``) and prose on how the model was made and how to load it. Everything comes from what
the pipeline wrote: the pretraining ``summary.json`` (shape, objective, steps, batch, precision, FLOPs, final
validation metrics), the corpus stage's ``stats.json`` when it is found (the datasets and document counts), the
tokenizer's size, and the package's license.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

LANGUAGE = "en"  # the presets' corpora (OpenWebText, Gutenberg, the demo's English prose)
TAGS = ["electra", "electra-ds"]
PIPELINE_TAG = {"discriminator": "feature-extraction", "generator": "fill-mask"}
LOADER = {"discriminator": "AutoModelForPreTraining", "generator": "AutoModelForMaskedLM"}
# The transformers versions the export loads with (tokenizer_config.json names PreTrainedTokenizerFast, a class
# both know; 5.x alone knows the TokenizersBackend it would otherwise name): checked with 4.57 and 5.x.
TRANSFORMERS_RANGE = ">=4.57,<6"
OBJECTIVES = {
    "electra": "ELECTRA replaced-token detection: a small generator (masked-LM) fills masked positions and the "
               "discriminator learns which tokens were replaced",
    "mlm": "masked language modelling (BERT-style baseline on the same backbone and data); the published "
           "discriminator is the masked-LM encoder with a new, untrained replaced-token head",
    "adversarial": "ELECTRA with a generator trained by policy gradient to fool the discriminator (experimental)",
}


def package_license() -> str:
    """The Hub's license id for the package's license (pyproject's ``license``), lower case (``apache-2.0``)."""
    text = None
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib  # Python 3.11+

            project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
            lic = project["license"] if project.get("name") == "electra-ds" else None
            text = lic.get("text") if isinstance(lic, dict) else lic
        except (ImportError, KeyError, ValueError, AttributeError):
            text = None
    if not text:
        try:
            from importlib.metadata import metadata

            meta = metadata("electra-ds")
            text = meta.get("License-Expression") or meta.get("License")
        except Exception:  # not installed: the checkout's pyproject was read above
            text = None
    return (text or "apache-2.0").strip().lower()


def corpus_datasets(corpus_stats: dict | None) -> tuple[list[str], dict]:
    """(Hub dataset ids, documents kept per source) from the corpus stage's stats.json; ``hf:<id>`` labels are
    Hub datasets (``-<n>`` is stripped where the corpus stage added it to tell two sources of one id apart)."""
    sources = (corpus_stats or {}).get("sources") or {}
    labels = [label for label in sources if label.startswith("hf:")]
    ids = []
    for label in labels:
        name = label.removeprefix("hf:")
        base = re.sub(r"-\d+$", "", name)
        ids.append(base if base != name and f"hf:{base}" in labels else name)
    kept = {label: counts.get("documents_out") for label, counts in sources.items() if isinstance(counts, dict)}
    return list(dict.fromkeys(ids)), kept


def pretraining_metadata(summary: dict) -> dict:
    """The pretraining settings the card's metadata records (from the pretrain summary.json)."""
    steps, batch, length = summary.get("steps"), summary.get("global_batch_size"), summary.get("tokens_per_example")
    meta = {"objective": summary.get("objective"), "model": summary.get("model"), "steps": steps,
            "global_batch_size": batch, "tokens_per_example": length,
            "tokens_seen": steps * batch * length if steps and batch and length else None,
            "precision": summary.get("precision"), "flops": summary.get("flops"),
            "flops_per_token": summary.get("flops_per_token"), "zero_stage": summary.get("zero_stage"),
            "world_size": summary.get("world_size"), "optimizer": summary.get("optimizer"),
            "mask_prob": summary.get("mask_prob"), "temperature": summary.get("temperature"),
            "embedding_sharing": summary.get("embedding_sharing"),
            "uniform_generator": summary.get("uniform_generator"),
            "seconds": summary.get("seconds"), "checkpoint": summary.get("tag"),
            "final_valid": summary.get("final_valid") or None}
    return {k: v for k, v in meta.items() if v is not None}


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e5 or abs(value) < 1e-2 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(role: str, *, summary: dict | None = None, scratch: dict | None = None, corpus_stats: dict | None = None,
           vocab_size: int | None = None, name: str | None = None, has_generator: bool = True,
           tokenizer: str = "sentencepiece") -> str:
    """The card of one exported model (``role``: discriminator or generator) as Markdown with YAML front matter.
    ``summary``: the pretraining summary; ``scratch``: the scratch export's record (random weights) instead."""
    datasets, kept = corpus_datasets(corpus_stats)
    meta = {"license": package_license(), "language": [LANGUAGE], "library_name": "transformers",
            "pipeline_tag": PIPELINE_TAG[role], "tags": TAGS + [role] + (["scratch"] if scratch else [])}
    if datasets and not scratch:
        meta["datasets"] = datasets
    if summary:
        meta["electra_ds"] = {"pretraining": pretraining_metadata(summary)}
    elif scratch:
        meta["electra_ds"] = {"source": "scratch", "seed": scratch.get("seed"), "model": scratch.get("model")}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    title = name or f"electra-ds {role}"
    shape = (summary or {}).get("model") or (scratch or {}).get("model") or {}
    lines = [f"---\n{front}---", "", f"# {title}", ""]
    if scratch:
        lines += [f"An ELECTRA {role} with **random weights**: the architecture of a pretrained model of this run, "
                  f"initialised from seed {scratch.get('seed')} and never trained. It is the pipeline's *scratch* "
                  "baseline (fine-tuning it shows what pretraining adds); it is not a useful model by itself.", ""]
    else:
        lines += [f"An ELECTRA {role} pretrained from scratch with the electra-ds pipeline (Snakemake, DeepSpeed, "
                  "MLflow): raw text, a vocabulary of its own, pretraining, export.", ""]
    lines += ["## How it was made", ""]
    if shape:
        lines.append(f"- **Model**: {shape.get('num_layers')} layer(s), hidden size {shape.get('hidden_size')}, "
                     f"{shape.get('num_heads')} attention heads, intermediate size {shape.get('intermediate_size')}, "
                     f"embedding size {shape.get('embedding_size')}, vocabulary {shape.get('vocab_size') or vocab_size}"
                     f", up to {shape.get('max_position_embeddings')} positions"
                     + (f"; generator {shape.get('generator_fraction')} of the discriminator's width"
                        if shape.get("generator_fraction") else "") + ".")
    if summary:
        meta_pt = pretraining_metadata(summary)
        objective = summary.get("objective")
        lines.append(f"- **Objective**: `{objective}`: {OBJECTIVES.get(objective, objective)}"
                     + (f"; {_num(summary['mask_prob'])} of the tokens masked" if summary.get("mask_prob") else "")
                     + ".")
        budget = f"- **Pretraining**: {_num(meta_pt.get('steps'))} steps of {_num(meta_pt.get('global_batch_size'))}"
        budget += f" sequences of {_num(meta_pt.get('tokens_per_example'))} tokens"
        if meta_pt.get("tokens_seen"):
            budget += f" ({_num(meta_pt['tokens_seen'])} tokens)"
        budget += f", {meta_pt.get('precision')} precision, DeepSpeed ZeRO stage {meta_pt.get('zero_stage')} on "
        budget += f"{meta_pt.get('world_size')} process(es), optimizer {meta_pt.get('optimizer')}"
        if meta_pt.get("flops"):
            budget += f"; {_num(float(meta_pt['flops']))} training FLOPs"
        if meta_pt.get("seconds"):
            budget += f" in {meta_pt['seconds'] / 3600:.2f} h"
        lines.append(budget + f" (checkpoint `{meta_pt.get('checkpoint')}`).")
        if meta_pt.get("final_valid"):
            shown = ", ".join(f"{k} {_num(v)}" for k, v in meta_pt["final_valid"].items()
                              if isinstance(v, (int, float)))
            lines.append(f"- **Final validation** (held-out shards): {shown}.")
    if kept and not scratch:
        lines.append("- **Data**: " + ", ".join(f"{label} ({_num(n)} documents)" if n is not None else label
                                                 for label, n in kept.items())
                     + ", normalised, filtered by length and deduplicated (exact and MinHash near-duplicates).")
    size = vocab_size or shape.get("vocab_size")
    if tokenizer == "wordpiece":
        lines.append(f"- **Tokenizer**: an uncased WordPiece vocabulary of {size} tokens (BERT's kind: lower-cased, "
                     "accents stripped, `##` continuations), trained on the run's corpus or loaded from a given "
                     "`vocab.txt`, saved as a fast Hugging Face tokenizer (`tokenizer.json`).")
    else:
        lines.append(f"- **Tokenizer**: a cased sentencepiece vocabulary of {size} pieces trained on the run's "
                     "corpus, saved as a fast Hugging Face tokenizer (`tokenizer.json`).")
    loader = LOADER[role]
    with_alibi = shape.get("attention_bias") == "alibi"
    lines += ["", "## How to load it", "",
              f"Works with `transformers{TRANSFORMERS_RANGE}` (the tokenizer is saved as `PreTrainedTokenizerFast`, "
              "which 4.x and 5.x both load; earlier 4.x releases are untested).", "",
              "```python",
              f"from transformers import {loader}, AutoTokenizer",
              *(["from electra_ds.common import alibi  # the attention bias this model was trained with"]
                if with_alibi else []),
              "",
              'path = "path/to/this/folder"  # or the Hub repo id',
              "tokenizer = AutoTokenizer.from_pretrained(path)",
              f"model = {loader}.from_pretrained(path, attn_implementation=alibi.implementation(path))" if with_alibi
              else f"model = {loader}.from_pretrained(path)",
              'inputs = tokenizer("The chef cooked the meal.", return_tensors="pt")',
              "outputs = model(**inputs)  # " + ("per-token replaced-token logits" if role == "discriminator"
                                                 else "masked-LM logits over the vocabulary"),
              "```", ""]
    if with_alibi:
        lines += ["This model was trained with ALiBi attention biases (a fixed penalty per head, linear in the "
                  "distance between positions; `\"alibi\": true` in `config.json`). They have no weights: the bias "
                  "comes from the attention function `electra_ds.common.alibi` registers with Hugging Face. Loaded "
                  "without `attn_implementation=alibi.implementation(path)`, the model runs without its bias and is "
                  "not the model that was trained.", ""]
    if role == "discriminator":
        lines += ["To fine-tune it on a classification task, load it with `AutoModelForSequenceClassification`"
                  " (`num_labels=...`); the classification head starts untrained. The encoder alone: `AutoModel`.", ""]
        if has_generator and not scratch:
            lines += ["Pushed to the Hub by electra-ds, the generator is in the repo's `generator/` folder: "
                      "`AutoModelForMaskedLM.from_pretrained(repo_id, subfolder=\"generator\")`.", ""]
    else:
        lines += ["The generator is the small masked-LM that produced the discriminator's replacements; the "
                  "discriminator is the model to fine-tune.", ""]
    return "\n".join(lines)


def read_corpus_stats(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
