"""The pretraining run's settings: one frozen dataclass, built once from the parsed and checked options.

``electra_ds/schemas/config.schema.yaml`` stays the one source of each setting's default, type, range and help
(electra_ds.common.settings); :class:`PretrainConfig` names the settings the pretrain stage takes, in the order of
its options (the order ``stage_args`` renders them into the rule's shell line), and says where each one goes
besides its own use:

* ``recorded``: into the run config every checkpoint keeps; a resume must match it
  (electra_ds.pretraining.checkpoint). ``before``: what checkpoints written before the setting existed did (such
  a checkpoint resumes when this run asks for that), or ANY: they resume with any value. ``resume_change``:
  ``--allow-resume-change`` may name it;
* ``pretrainer``: an argument of :class:`electra_ds.pretraining.model.ElectraPretrainer` (the objective);
* ``summary``: a key of ``summary.json``;
* ``param``: an MLflow param of the run.

So adding a pretraining option is its schema entry, one line here and its use. The stage's ``run``
(electra_ds.pretraining.pretrain) builds the config once (:meth:`PretrainConfig.from_args`) and hands it to the
Trainer; nothing reads the argparse namespace after that.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

ANY = object()  # ``before``: checkpoints without the setting resume whatever this run's value is

_USES = ("recorded", "pretrainer", "summary", "param")


def option(*, section: str | None = "pretrain", recorded: bool = False, before=MISSING, resume_change: bool = False,
           pretrainer: bool = False, summary: bool = False, param: bool = False):
    """A field of :class:`PretrainConfig`: ``section`` is the config section (``""``: the top level; None: an option of
    the stage only, not a config setting); the rest say where the value goes (see the module's docstring)."""
    return field(metadata={"section": section, "recorded": recorded, "before": before, "resume_change": resume_change,
                           "pretrainer": pretrainer, "summary": summary, "param": param})


@dataclass(frozen=True)
class PretrainConfig:
    # The stage's own options: where its inputs and outputs are.
    shards: str = option(section=None)
    output_dir: str = option(section=None)
    tokenizer_dir: str | None = option(section=None)  # whole_word masking's vocabulary
    # The config's pretrain section. `model`: the checkpoint, summary.json and MLflow get the resolved shape instead
    # (ModelShape with the shards' vocabulary size).
    model: dict = option()
    objective: str = option(recorded=True, pretrainer=True, summary=True, param=True)
    mask_prob: float = option(recorded=True, pretrainer=True, summary=True, param=True)
    disc_weight: float = option(recorded=True, pretrainer=True, param=True)
    temperature: float = option(recorded=True, pretrainer=True, summary=True)
    disallow_correct: bool = option(recorded=True, pretrainer=True)
    adversarial_mle_weight: float = option(pretrainer=True)
    masking: str = option(recorded=True, before="token", pretrainer=True)
    mask_count: str = option(recorded=True, before="exact", pretrainer=True)
    uniform_generator: bool = option(recorded=True, before=False, pretrainer=True)
    embedding_sharing: str = option(recorded=True, before="es", pretrainer=True)
    output_bias_init: str = option(summary=True)  # only the start differs: a resume takes the checkpoint's biases
    optimizer: str = option(recorded=True, before="adamw")  # summary.json and MLflow get the optimizer's class
    schedule: str = option(recorded=True, before="warmup_then_decay")
    ds_config: str = option()
    global_batch_size: int = option(recorded=True, summary=True, param=True)
    micro_batch_size: int = option()  # MLflow gets the one DeepSpeed resolved (0: global / processes)
    learning_rate: float = option(recorded=True, before=ANY, resume_change=True, param=True)
    weight_decay: float = option(recorded=True, before=ANY, resume_change=True)
    warmup_steps: int = option(recorded=True, before=ANY, resume_change=True, param=True)
    max_steps: int = option(param=True)
    precision: str = option()  # summary.json and MLflow get the resolved one (auto: by the device)
    device: str = option()  # MLflow gets the resolved one
    compile: bool = option(param=True)
    dropout_masks: str = option(recorded=True, before="torch", param=True)  # the masks change a resumed run's numbers
    checkpoint_every: int = option()
    checkpoint_minutes: float = option()
    keep_checkpoints: int = option()
    log_every: int = option()
    eval_every: int = option()
    eval_examples: int = option()
    plateau_steps: int = option()
    peak_tflops: float = option()
    max_skipped_steps: int = option()
    skip_window: int = option()
    spike_factor: float = option()
    allow_resume_change: str | None = option()
    collective_timeout_minutes: float = option()
    # The config's top level.
    seed: int = option(section="", recorded=True, param=True)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PretrainConfig:
        """The config of the parsed options (after electra_ds.cli checked them against the schema)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def select(self, use: str) -> dict:
        """{name: value} of the settings that go to ``use`` (recorded, pretrainer, summary or param)."""
        if use not in _USES:
            raise ValueError(f"not a use of a pretraining setting: {use!r} (one of {_USES})")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata[use]}


def _settings() -> dict:
    """{section: (field, ...)}: the config settings the stage takes as options, in the fields' order."""
    out: dict = {}
    for f in fields(PretrainConfig):
        section = f.metadata["section"]
        if section is not None:
            out[section] = out.get(section, ()) + (f.name,)
    return out


SETTINGS = _settings()  # electra_ds.common.settings: the stage's options, their checks, the rule's shell line

# What checkpoints written before a recorded setting existed did: such a checkpoint resumes when this run asks for it.
BEFORE_FIELD = {f.name: f.metadata["before"] for f in fields(PretrainConfig)
                if f.metadata["before"] is not MISSING and f.metadata["before"] is not ANY}

# Recorded settings that older checkpoints lack and that resume with any value.
UNRECORDED_BEFORE = tuple(f.name for f in fields(PretrainConfig) if f.metadata["before"] is ANY)

# What --allow-resume-change may name: a rerun may resume with another value of these (e.g. a lower learning rate
# after a spike); every other recorded setting must match the checkpoint's.
RESUME_CHANGEABLE = tuple(sorted(f.name for f in fields(PretrainConfig) if f.metadata["resume_change"]))
