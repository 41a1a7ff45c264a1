"""The recipe schema: typed dataclasses, the one place where every field is documented.

A recipe is a YAML mapping that loads into :class:`Recipe`; dotted ``key=value`` overrides
from the command line are applied to the mapping first, so every value, wherever it came
from, passes the same checks. Everything is validated before any work starts.
``docs/recipe-reference.md`` is generated from the ``help`` texts below (see
:func:`distill.schema.reference_markdown`); a test keeps it in sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import losses
import teachers
from distill.schema import meta

# The names a recipe may use are the registries' own.
SCHEDULE_KINDS = tuple(losses.SCHEDULES)
DIVERGENCE_KINDS = tuple(losses.DIVERGENCES)
ADAPTIVE_KINDS = tuple(losses.ADAPTIVE)
TEACHER_KINDS = tuple(teachers.TEACHERS)


@dataclass
class ScheduleConfig:
    """A value that changes with the optimizer step. A bare number in YAML means constant."""

    kind: str = field(default="constant", metadata=meta(
        "Shape of the schedule after warmup.", choices=SCHEDULE_KINDS))
    start: float = field(default=0.0, metadata=meta("Value at step 0 and throughout warmup."))
    end: float | None = field(default=None, metadata=meta(
        "Value at `total_steps` and after; null means the same as `start`."))
    warmup_steps: int = field(default=0, metadata=meta(
        "Steps before the shape begins; the value is `start` during them (or ramps from "
        "`warmup_start`).", min=0))
    warmup_start: float | None = field(default=None, metadata=meta(
        "If set, the value ramps linearly from this to `start` during warmup."))
    total_steps: int | None = field(default=None, metadata=meta(
        "Step at which `end` is reached; null means `train.max_steps`.", min=1))
    rate: float = field(default=5.0, metadata=meta(
        "`exponential` only: how front-loaded the change is.", min=1e-6))
    stages: int = field(default=4, metadata=meta(
        "`step` only: number of equal plateaus between start and end.", min=1))
    decay_fraction: float = field(default=0.2, metadata=meta(
        "`wsd` only: final share of the post-warmup span spent decaying.", min=1e-6, max=1.0))


@dataclass
class DataConfig:
    source: str = field(default="stdlib", metadata=meta(
        "Where text comes from: `stdlib` (the Python standard library's own .py sources, no "
        "download), `python_docs` (English prose: the Python Language Reference topics that "
        "CPython ships for `help()`, no download), `files` (local text / JSON-lines / parquet "
        "files) or `hub` (a dataset name from the Hugging Face hub, downloaded by `datasets`).",
        choices=("stdlib", "python_docs", "files", "hub")))
    files: list[str] = field(default_factory=list, metadata=meta(
        "For `source: files`: paths, directories (every file beneath them) or glob patterns "
        "(`**` matches nested folders). How each file is read follows `format`."))
    format: str = field(default="auto", metadata=meta(
        "How `files` are read: `auto` by extension (plain text: .txt .md .rst .tex .html .py "
        ".c ... see docs/data.md; .json/.jsonl; .parquet), or `text`, `json`, `parquet` for "
        "every file whatever its extension.", choices=("auto", "text", "json", "parquet")))
    document: str = field(default="file", metadata=meta(
        "What one document of a plain-text file is: the whole `file` (newlines kept) or "
        "each non-blank `line`. Rows of JSON and parquet files are always one document.",
        choices=("file", "line")))
    encoding: str = field(default="utf-8", metadata=meta(
        "Text encoding of plain-text and JSON-lines files, e.g. `latin-1`; a file that is "
        "not valid in it is refused, naming the file and line."))
    dedupe: bool = field(default=True, metadata=meta(
        "Drop exact duplicate documents (same text), keeping the first; the count is in "
        "the data summary."))
    streaming: bool = field(default=False, metadata=meta(
        "For `source: hub`: read the dataset as a stream (`datasets` streaming=True) "
        "instead of downloading it whole; with `max_chars`, reading stops at the cap."))
    hub_name: str | None = field(default=None, metadata=meta(
        "For `source: hub`: the dataset name, e.g. `wikitext`."))
    hub_config: str | None = field(default=None, metadata=meta(
        "For `source: hub`: the dataset configuration, e.g. `wikitext-2-raw-v1`."))
    hub_split: str = field(default="train", metadata=meta(
        "For `source: hub`: the split to read; validation is carved out of it."))
    text_field: str = field(default="text", metadata=meta(
        "Column holding the text (JSON-lines, parquet and hub datasets)."))
    max_chars: int | None = field(default=None, metadata=meta(
        "Cap on the characters read (documents are taken in a fixed order until the cap); "
        "null reads everything.", min=1000))
    validation_fraction: float = field(default=0.05, metadata=meta(
        "Share of documents held out for validation, chosen deterministically.",
        min=0.001, max=0.5))
    block_size: int = field(default=128, metadata=meta(
        "Tokens per training sequence; documents are joined with the end-of-text token "
        "and packed into blocks of this length.", min=8))
    tokenizer: str = field(default="bpe", metadata=meta(
        "`bpe` trains a byte-level BPE tokenizer on the training split (cached); anything "
        "else is a transformers tokenizer: a local directory or a hub name."))
    vocab_size: int = field(default=4096, metadata=meta(
        "Vocabulary size of the trained `bpe` tokenizer.", min=300, max=1_000_000))
    cache_dir: str | None = field(default=None, metadata=meta(
        "Where trained tokenizers and tokenised blocks are cached (docs/data.md); null "
        "means $DISTILL_CACHE or ~/.cache/distill."))


_PRESET_HELP = "Named Llama 4 text config (`students.PRESETS`; `distill inspect NAME`)."
_CONFIG_FILE_HELP = ("A YAML/JSON file of `Llama4TextConfig` fields, or any transformers "
                     "causal-LM `config.json` (or its directory); replaces `preset`.")
_OVERRIDES_HELP = ("Config fields that replace the preset's or file's, e.g. "
                   "`num_hidden_layers: 4`. `vocab_size` always follows the tokenizer.")


@dataclass
class ModelConfig:
    """A model built from scratch: a named preset or a config file, plus overrides."""

    preset: str = field(default="scout-tiny", metadata=meta(_PRESET_HELP))
    config_file: str | None = field(default=None, metadata=meta(_CONFIG_FILE_HELP))
    overrides: dict[str, Any] = field(default_factory=dict, metadata=meta(_OVERRIDES_HELP))


@dataclass
class StudentConfig:
    preset: str = field(default="scout-tiny", metadata=meta(_PRESET_HELP))
    config_file: str | None = field(default=None, metadata=meta(_CONFIG_FILE_HELP))
    overrides: dict[str, Any] = field(default_factory=dict, metadata=meta(_OVERRIDES_HELP))
    init: str = field(default="random", metadata=meta(
        "`random`; `pretrained` (from_pretrained of `name_or_path`, whose config then wins); "
        "`from_teacher` (embeddings, head, norms and a subset of the teacher's layers and "
        "experts, copied where shapes match).", choices=("random", "pretrained", "from_teacher")))
    name_or_path: str | None = field(default=None, metadata=meta(
        "For `init: pretrained`: a local directory or a hub model name."))
    teacher_layers: list[int] | None = field(default=None, metadata=meta(
        "For `from_teacher`: which teacher layers become the student's, in order; null "
        "spreads them evenly (first and last included)."))
    teacher_experts: list[int] | None = field(default=None, metadata=meta(
        "For `from_teacher`: which teacher experts each MoE layer keeps; null keeps the "
        "first `num_local_experts`."))
    peft: dict[str, Any] | None = field(default=None, metadata=meta(
        "Train adapters instead of all weights: a peft config mapping, e.g. "
        "`{peft_type: LORA, r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}` "
        "(any adapter `peft.get_peft_config` accepts; task_type defaults to CAUSAL_LM)."))


@dataclass
class HFTeacherConfig:
    """A pretrained teacher: run live (`kind: hf`) or filling a cache (`kind: cached`)."""

    name_or_path: str | None = field(default=None, metadata=meta(
        "A local checkpoint directory or a hub model name (any causal LM `from_pretrained` "
        "loads, Llama 4 multimodal checkpoints included: their text model is used)."))
    dtype: str = field(default="float32", metadata=meta(
        "The dtype the teacher runs in.", choices=("float32", "bfloat16", "float16")))
    device_map: str | None = field(default=None, metadata=meta(
        "A transformers `device_map` (e.g. `auto`) to spread a large teacher over the "
        "available devices; null places it on the training device."))
    shard: bool = field(default=False, metadata=meta(
        "`kind: hf` only: shard the frozen teacher's decoder layers over the launch's "
        "processes with FSDP2 (`fully_shard`), each process holding 1/N of their weights and "
        "gathering one layer at a time in the forward; embeddings, final norm and output head "
        "stay whole on every process. A no-op in a single process. Not with `device_map`, "
        "and it turns `prefetch` off (the gathers are collectives)."))


@dataclass
class CachedTeacherConfig:
    """The `hf` teacher's top-k outputs, computed once and read back from disk."""

    top_k: int = field(default=64, metadata=meta(
        "Teacher log-probabilities kept per position (plus the tail mass); the cache takes "
        "about block_size x (8 x top_k + 4) bytes per block (docs/teacher-cache.md).", min=1))
    cache_dir: str | None = field(default=None, metadata=meta(
        "Where caches live: a directory; `run` for `<output_dir>/teacher_cache` (deleted "
        "with the run, not shared with other runs); null means "
        "`<data cache>/teacher-outputs`, shared by every run over the same teacher and data "
        "(compare's variants and seeds too). Only the blocks a run reads are computed; a "
        "later run adds the ones it lacks."))
    batch_size: int = field(default=16, metadata=meta(
        "Sequences per teacher forward while filling the cache.", min=1))


@dataclass
class ServedTeacherConfig:
    """A frozen teacher served over HTTP (vLLM's OpenAI-compatible API)."""

    urls: list[str] = field(default_factory=list, metadata=meta(
        "Base URLs of the servers, e.g. `[http://127.0.0.1:8000]` (the root, not `/v1`): "
        "replicas of the same model, used round-robin; a failed request is retried on the "
        "others. Checked at start (health, model, vocabulary), never during validation."))
    model: str | None = field(default=None, metadata=meta(
        "The served model's name (`/v1/models`); null uses the server's only model."))
    top_k: int = field(default=20, metadata=meta(
        "Teacher log-probabilities per position (plus the tail mass); vLLM allows at most "
        "its `--max-logprobs` (default 20), `distill serve-teacher` up to the vocabulary.",
        min=1))
    batch_size: int = field(default=8, metadata=meta(
        "Sequences per request; a micro-batch's requests go out concurrently across the "
        "replicas.", min=1))
    timeout_s: float = field(default=120.0, metadata=meta(
        "Seconds to wait for one answer before the request counts as failed.", min=0.01))
    retries: int = field(default=3, metadata=meta(
        "Further attempts per failed request (no connection, timeout, 408/429/5xx): at once "
        "on each other replica, then with a doubling wait from 0.5 s; then the run stops, "
        "its last checkpoint intact.", min=0, max=100))
    api_key_env: str | None = field(default=None, metadata=meta(
        "The NAME of an environment variable holding the server's API key (sent as "
        "`Authorization: Bearer`); the key itself never appears in a recipe, log or "
        "message. Null: no key."))


@dataclass
class CodistillTeacherConfig:
    """A teacher built here and trained on the hard targets beside the student."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset="scout-tiny"),
                               metadata=meta("The teacher's architecture."))
    lr: float = field(default=3e-3, metadata=meta(
        "The teacher's peak learning rate (AdamW, same warmup and schedule shape as the "
        "student).", min=0.0, max=1.0))
    mutual_weight: float = field(default=0.0, metadata=meta(
        "Weight of the teacher's own soft term towards the student (deep mutual learning); "
        "0 trains the teacher on the hard targets alone.", min=0.0))
    snapshot_every: int = field(default=0, metadata=meta(
        "The student learns from a frozen snapshot of the teacher refreshed every N steps "
        "(Anil et al. 2018); 0 uses the live teacher.", min=0))


@dataclass
class TeacherConfig:
    """`kind` picks the teacher; each kind reads its own sub-section (`cached` reads `hf`
    too: the teacher that fills the cache; `served` reads `served`)."""

    kind: str = field(default="codistill", metadata=meta(
        " ".join(f"`{name}`: {kind.summary}." for name, kind in teachers.TEACHERS.items()),
        choices=TEACHER_KINDS))
    prefetch: str = field(default="auto", metadata=meta(
        "For teachers that can run ahead (`hf` unsharded, `cached`, `served`): compute the "
        "teacher's outputs for the next micro-batch in a worker thread (on its own CUDA "
        "stream) while the student trains on this one. `auto` turns it on when training on "
        "CUDA, and on CPU only for `served` (which waits on its server): otherwise both sides "
        "share the same cores and it measured slower (docs/distributed.md).",
        choices=("auto", "on", "off")))
    hf: HFTeacherConfig = field(default_factory=HFTeacherConfig, metadata=meta(
        "For `hf` and `cached`: the pretrained teacher."))
    cached: CachedTeacherConfig = field(default_factory=CachedTeacherConfig, metadata=meta(
        "For `cached`: the cache of its outputs."))
    codistill: CodistillTeacherConfig = field(default_factory=CodistillTeacherConfig,
                                              metadata=meta("For `codistill`: the teacher "
                                                            "that trains."))
    served: ServedTeacherConfig = field(default_factory=ServedTeacherConfig, metadata=meta(
        "For `served`: the servers and what to ask them."))

    # Keys of the flat teacher section before the kinds had sub-sections: a recipe that
    # still uses one is told where it went.
    moved: ClassVar[dict[str, str]] = {
        "name_or_path": "hf.name_or_path", "dtype": "hf.dtype", "device_map": "hf.device_map",
        "shard": "hf.shard", "top_k": "cached.top_k", "cache_dir": "cached.cache_dir",
        "cache_batch_size": "cached.batch_size", "model": "codistill.model",
        "lr": "codistill.lr", "mutual_weight": "codistill.mutual_weight",
        "snapshot_every": "codistill.snapshot_every"}

    def pretrained(self) -> str | None:
        """The pretrained checkpoint this teacher runs (kinds that read `hf`), else None."""
        return self.hf.name_or_path if "hf" in teachers.TEACHERS[self.kind].sections else None


@dataclass
class TaidConfig:
    """`loss.adaptive: taid` only (docs/losses.md): the soft target is
    softmax((1 - t) log q + t log p), with t moving from `t_start` towards `t_end`."""

    t_start: float = field(default=0.4, metadata=meta(
        "t at the first step, in [0, 1) and below `t_end` (0: the target is the student's "
        "own distribution, 1: the teacher's).", min=0.0, max=1.0))
    t_end: float = field(default=1.0, metadata=meta(
        "The most t reaches, in (0, 1]; the linear floor reaches it after `total_steps`.",
        min=0.0, max=1.0))
    rate: float = field(default=5e-4, metadata=meta(
        "How far t moves towards 1 per step: t += rate * sigmoid(momentum of the soft "
        "term's relative decrease) * (1 - t).", min=0.0))
    momentum: float = field(default=0.99, metadata=meta(
        "Momentum of the running relative decrease of the soft term, in [0, 1).",
        min=0.0, max=1.0))
    total_steps: int | None = field(default=None, metadata=meta(
        "Steps over which t's floor rises linearly from `t_start` to `t_end`; null means "
        "`train.max_steps`.", min=1))


@dataclass
class LossConfig:
    divergence: str = field(default="forward_kl", metadata=meta(
        "Divergence between teacher p and student q at temperature T (formulas in "
        "docs/losses.md).", choices=DIVERGENCE_KINDS))
    soft_weight: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(start=0.5), metadata=meta(
            "Weight alpha of the soft (teacher) term, a schedule of the step, in [0, 1]."))
    hard_weight: ScheduleConfig | None = field(default=None, metadata=meta(
        "Weight of the hard (data) cross-entropy; null means 1 - soft_weight."))
    temperature: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(start=1.0), metadata=meta(
            "Softmax temperature T of both distributions in the soft term (the term is "
            "multiplied by T^2 so its gradient scale does not depend on T)."))
    beta: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(start=0.5), metadata=meta(
            "`jsd` only: the teacher's weight in the mixture, in [0, 1]; 0 is forward KL, "
            "1 reverse KL."))
    skew: float = field(default=0.1, metadata=meta(
        "`skew_kl` / `skew_reverse_kl` only: the mixture share a.", min=0.0, max=1.0))
    akl_head_mass: float = field(default=0.5, metadata=meta(
        "`akl` only: teacher probability mass that defines the head.", min=1e-6, max=1.0))
    todi_sharpness: float = field(default=1.0, metadata=meta(
        "`todi` only: s > 0 in the per-outcome gate sigmoid(s log(p/q)) that mixes forward "
        "and reverse KL; larger is closer to a hard switch."))
    adaptive: str = field(default="none", metadata=meta(
        "Adaptive weighting on top of the schedules: `teacher_confidence` and `loss_balance` "
        "redistribute the scheduled weights (keeping the mean soft weight, resp. the total "
        "weight), `uncertainty` replaces their magnitudes, `taid` moves the soft target "
        "(docs/losses.md).", choices=ADAPTIVE_KINDS))
    balance_momentum: float = field(default=0.9, metadata=meta(
        "`loss_balance` only: momentum of the running averages.", min=0.0, max=0.9999))
    taid: TaidConfig = field(default_factory=TaidConfig, metadata=meta(
        "For `adaptive: taid`: the interpolation coefficient's start, end and pace."))
    router_aux_weight: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(start=0.0), metadata=meta(
            "Weight of the student's MoE router load-balancing loss; 0 skips computing it."))
    fused: str = field(default="auto", metadata=meta(
        "Memory-bounded chunked loss from hidden states: `auto` uses it whenever the student "
        "exposes hidden states and a plain linear output head (a teacher then answers with "
        "its hidden states and head where it can, else with logits or top-k).",
        choices=("auto", "on", "off")))
    chunk_size: int = field(default=256, metadata=meta(
        "Tokens per chunk in the fused path: peak loss memory is about 8 x chunk_size x "
        "vocabulary x 4 bytes.", min=1))


@dataclass
class TrainConfig:
    max_steps: int = field(default=300, metadata=meta("Optimizer steps to run.", min=1))
    micro_batch_size: int = field(default=8, metadata=meta(
        "Sequences per forward pass (per process).", min=1))
    grad_accum_steps: int = field(default=1, metadata=meta(
        "Micro-batches per optimizer step. The loss is normalised by the valid target "
        "tokens of the whole step, so 1x8 and 8x1 give the same gradient.", min=1))
    lr: float = field(default=3e-3, metadata=meta(
        "Student's peak learning rate (AdamW).", min=0.0, max=1.0))
    weight_decay: float = field(default=0.01, metadata=meta("AdamW weight decay.", min=0.0))
    warmup_steps: int = field(default=20, metadata=meta(
        "Linear learning-rate warmup steps.", min=0))
    lr_schedule: str = field(default="cosine", metadata=meta(
        "Learning-rate decay after warmup.", choices=("cosine", "linear", "constant")))
    max_grad_norm: float = field(default=1.0, metadata=meta(
        "Gradient-norm clipping threshold; 0 disables clipping.", min=0.0))
    eval_every: int = field(default=100, metadata=meta(
        "Evaluate on the validation split every N steps (besides the evaluations at the "
        "start and the end, see `eval_at_start` and `eval_at_end`); 0: no periodic "
        "evaluation.", min=0))
    eval_at_start: bool = field(default=True, metadata=meta(
        "Evaluate the student before its first step (step 0; not on resume). false skips "
        "it: the run then reports no starting validation loss."))
    eval_at_end: bool = field(default=True, metadata=meta(
        "Evaluate the student after its last step; its result is the run's final "
        "`val_loss` (the CLI's last line, the model card, `distill compare`, which refuses "
        "false). false skips it, and a periodic evaluation falling on the last step: with "
        "`eval_every: 0` and `eval_at_start: false` a run (a timing run, say) evaluates "
        "nothing."))
    eval_batches: int | None = field(default=None, metadata=meta(
        "Cap on validation batches per evaluation; null uses the whole split.", min=1))
    eval_batch_size: int = field(default=16, metadata=meta(
        "Sequences per validation batch.", min=1))
    checkpoint_every: int = field(default=100, metadata=meta(
        "Write a checkpoint every N steps; 0 disables checkpoints.", min=0))
    keep_checkpoints: int = field(default=2, metadata=meta(
        "How many of the newest complete checkpoints to keep.", min=1))
    log_every: int = field(default=1, metadata=meta(
        "Write a metrics.jsonl row every N steps.", min=1))
    mixed_precision: str = field(default="no", metadata=meta(
        "Autocast precision, as accelerate allows.", choices=("no", "fp16", "bf16")))
    cpu: bool = field(default=False, metadata=meta("Force the CPU even where a GPU exists."))
    on_nonfinite: str = field(default="stop", metadata=meta(
        "A NaN or infinite loss term (e.g. a teacher producing NaN): `stop` the run before "
        "the optimizer step, or `skip` that step (logged with `skipped`) and go on; after "
        "`max_skipped_steps` skips in a row the run stops anyway.", choices=("stop", "skip")))
    max_skipped_steps: int = field(default=10, metadata=meta(
        "With `on_nonfinite: skip`: consecutive skipped steps before the run stops.", min=1))
    efficient_moe: bool = field(default=True, metadata=meta(
        "Run Llama 4 MoE layers through the routed-tokens-only forward (same outputs and "
        "gradients as transformers', cost grows with experts per token, not experts)."))


@dataclass
class OnPolicyConfig:
    """On-policy distillation (GKD): part of each step's sequences are continued by the
    student itself, and the teacher grades every sampled token (docs/on-policy.md)."""

    fraction: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(start=0.0), metadata=meta(
            "Share of each optimizer step's sequences whose continuation the student "
            "generates (GKD's lambda), a schedule of the step in [0, 1]; the first "
            "round(fraction x rows of the step) rows are generated. 0 (the default) turns "
            "on-policy distillation off and leaves training exactly as without this section."))
    prompt_tokens: int = field(default=32, metadata=meta(
        "The prompt: the first tokens of a data block; the student continues it.", min=1))
    max_new_tokens: int = field(default=64, metadata=meta(
        "Most tokens the student writes per sequence; it stops earlier at the end-of-text "
        "token. With `prompt_tokens` it must fit a block: prompt_tokens + max_new_tokens <= "
        "data.block_size + 1.", min=1))
    temperature: float = field(default=1.0, metadata=meta(
        "Sampling temperature of the student's continuations (> 0).", min=0.0))
    top_p: float = field(default=1.0, metadata=meta(
        "Nucleus sampling: sample from the smallest set of tokens holding this probability "
        "mass; 1 samples from the whole distribution.", min=0.0, max=1.0))
    loss: str = field(default="full", metadata=meta(
        "The soft term on generated tokens: `full` (the divergence over the whole vocabulary "
        "at every sampled position) or `sampled` (the policy-gradient estimator of the "
        "reverse KL from the sampled tokens alone). The hard (data) term is 0 there.",
        choices=("full", "sampled")))

    def active(self) -> bool:
        """Whether ``fraction`` is nonzero at any step (a schedule's value stays between
        its warmup start, start and end; a constant one is its start)."""
        f = self.fraction
        values = [f.start, f.warmup_start] + ([] if f.kind == "constant" else [f.end])
        return any(v for v in values if v is not None)


@dataclass
class VariantConfig:
    name: str = field(default="", metadata=meta(
        "The variant's name: a directory name under `output_dir/variants/` and its label in "
        "the table and plot (letters, digits, `-`, `_`, `.`)."))
    overrides: dict[str, Any] = field(default_factory=dict, metadata=meta(
        "Dotted recipe keys and their values for this variant, e.g. "
        "`{loss.soft_weight: 0.0}`. Seed, data, step budget and validation batches are "
        "shared: they cannot be overridden here."))
    description: str = field(default="", metadata=meta("One line for the report."))


@dataclass
class CompareConfig:
    variants: list[VariantConfig] = field(default_factory=list, metadata=meta(
        "What `distill compare` runs: the base recipe under each variant's overrides."))
    seeds: list[int] | None = field(default=None, metadata=meta(
        "Run every variant under each of these seeds (a seed sets the student's "
        "initialisation and the data order), into `variants/<name>/seed-<s>/`; the table "
        "then shows mean ± standard deviation and the verdict tells a winner from noise. "
        "The teacher is still trained and cached once. Null runs the recipe's own `seed` "
        "alone. E.g. `[0, 1, 2]`."))
    teacher_recipe: str | None = field(default=None, metadata=meta(
        "A recipe that trains the teacher first (into `output_dir/teacher`); its student "
        "then teaches every variant as a cached teacher. Null uses the recipe's own teacher "
        "(an `hf` teacher is cached once and shared)."))
    teacher_overrides: dict[str, Any] = field(default_factory=dict, metadata=meta(
        "Dotted keys and values applied to `teacher_recipe`, e.g. `{data.hub_name: "
        "wikitext, train.max_steps: 2000}` (its `output_dir` is always "
        "`output_dir/teacher`). A finished teacher is reused only while its resolved "
        "recipe stays the same."))
    eval_batches: int | None = field(default=None, metadata=meta(
        "Validation batches (of `train.eval_batch_size` sequences) for the final "
        "`kl_to_teacher`, `top1_agreement` and `ece`; null uses `train.eval_batches`: the "
        "positions of every variant's `val_loss` and of the teacher's loss, so that all "
        "columns are measured on the same tokens.", min=1))


@dataclass
class Recipe:
    output_dir: str = field(default="runs/quickstart", metadata=meta(
        "Directory for metrics.jsonl, config.yaml, checkpoints/ and student/."))
    # The most numpy's seeding (inside accelerate's set_seed) takes: 2**32 is a traceback.
    seed: int = field(default=0, metadata=meta(
        "Seeds initialisation, data order and every random draw; a CPU run is reproducible.",
        min=0, max=2**32 - 1))
    trust_remote_code: list[str] = field(default_factory=list, metadata=meta(
        "Models and tokenizers (local directories or hub names, as the recipe writes them) "
        "whose own Python code may run when they load: a `config.json` or "
        "`tokenizer_config.json` whose `auto_map` names modules that transformers has no "
        "class for. Empty by default: such a model is refused, naming its path. Name only "
        "code you have read; every other path stays refused."))
    data: DataConfig = field(default_factory=DataConfig, metadata=meta("Text corpus and tokenizer."))
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata=meta("The teacher."))
    student: StudentConfig = field(default_factory=StudentConfig, metadata=meta(
        "The student: architecture, initialisation, adapters."))
    loss: LossConfig = field(default_factory=LossConfig, metadata=meta(
        "How soft and hard targets are combined."))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=meta("The training loop."))
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig, metadata=meta(
        "On-policy distillation: the student writes, the teacher grades (off by default)."))
    compare: CompareConfig = field(default_factory=CompareConfig, metadata=meta(
        "Variants for `distill compare` (ignored by `distill run`)."))
