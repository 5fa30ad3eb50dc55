"""Command-line arguments: one dataclass per concern, shared by every entry script.

Each script picks the groups it needs and calls :func:`parse_args`. Field names are the flag names
(``--teacher_model_path``, ``--layer_or_sparsity``, ...) so the original paper's commands carry over.
Cross-field rules live in ``__post_init__`` and raise :class:`ArgumentError`, which
:func:`parse_args` turns into one clear line (exit status 2), never a traceback. Parsing reads no
file; what a checkpoint decides is filled in by the script's ``args.complete()`` (:func:`complete_task`).

Example::

    args = parse_args([RunArguments, DataArguments, TrainingArguments], ["--task_name", "mrpc", ...])
    args.task_name, args.learning_rate
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import types
import typing
from dataclasses import dataclass, field

from data.tasks import TaskSpec, get_task, validate_selection_metric
from models import MODEL_REGISTRY, get_model_class
from utils.artifacts.model_io import check_model_path, model_type_for
from utils.artifacts.students import StudentSpec
from utils.command.planner import load_plan_config
from utils.engine.objectives import check_objective_task, check_temperature, resolve_objective
from utils.errors import USER_ERRORS, ArgumentError

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def arg(default=dataclasses.MISSING, help: str = "", choices=None, **kwargs):  # noqa: A002 - argparse vocabulary
    """A dataclass field carrying argparse help text (and optional choices)."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class RunArguments:
    output_dir: str = arg(help="Directory for every file of this run, used literally (created if absent).")
    overwrite_output_dir: bool = arg(False, help="Start afresh even if --output_dir holds a finished or resumable run.")
    seed: int = arg(776, help="Seed for data order, initialisation and dropout; the same seed gives the same run.")
    use_cpu: bool = arg(False, help="Run on the CPU even when CUDA is available.")
    use_fp16: bool = arg(False, help="float16 mixed precision with a gradient scaler; CUDA only (CPU: --use_bf16).")
    use_bf16: bool = arg(False, help="bfloat16 mixed precision (autocast, fp32 weights converted once per "
                                         "step); CUDA or CPU.")
    local_rank: int = arg(-1, help="Set by torch.distributed launchers; torchrun's LOCAL_RANK is used when present.")
    model_suffix: str = arg("none", help="Free-form label recorded in args.json (kept for the original scripts).")
    fsdp: bool = arg(False, help="Under torchrun, shard the student and the teacher across the processes with "
                     "PyTorch's FSDP2 (one unit per transformer layer) instead of replicating them (DDP).")
    dry_run: bool = arg(False, help="Print the plan (sizes, training FLOPs, memory per device at every candidate "
                        "sparsity) from the model's config, built on the meta device, and exit; the model path may "
                        "be a published name such as t5-3b. Writes nothing.")
    dry_run_devices: int = arg(1, help="Devices the --dry_run plan shards weights, gradients and optimizer over.")

    def __post_init__(self):
        if self.use_fp16 and self.use_bf16:
            raise ArgumentError("--use_fp16 and --use_bf16 are exclusive: pick one")
        if self.dry_run_devices < 1:
            raise ArgumentError(f"--dry_run_devices {self.dry_run_devices}: expected a positive integer")


@dataclass
class ModelArguments:
    model_type: str | None = arg(None, help="Model class: sparsebert_cls / sparseenct5_cls / sparsedecoder_cls "
                                 "(classification, regression), sparsebert_ner / sparseenct5_ner / sparsedecoder_ner "
                                 "(token classification) or sparsedecoder_lm (language modelling); default: what the "
                                 "task and the checkpoint's config call for.", choices=tuple(MODEL_REGISTRY))


@dataclass
class FinetuneArguments:
    model_name_or_path: str = arg(help="Pretrained model to fine-tune: a hub name (bert-base-uncased, t5-base) or a "
                                  "directory.")


@dataclass
class StudentArguments:
    layer_or_sparsity: str = arg("4L", help="Student: kL keeps the teacher's bottom k layers, sS slices it to "
                                 "sparsity s%% by its sparsity map (e.g. 90S), or a directory holding a student.")
    student: StudentSpec = field(init=False)

    def __post_init__(self):
        self.student = StudentSpec.parse(self.layer_or_sparsity, "--layer_or_sparsity")


@dataclass
class DataArguments:
    task_name: str = arg(help="Task: cola sst2 mrpc stsb qqp mnli mnlimm qnli rte wnli conll polarity pos lm")
    data_type: str | None = arg(None, help="Tokenisation pipeline; default: the one of the task and the model family.",
                                choices=tuple(dict.fromkeys(cls.data_type for cls in MODEL_REGISTRY.values())))
    data_dir: str = arg("datasets", help="Root folder holding {task_name}/ (or the official GLUE folder names).")
    max_length: int = arg(128, help="Maximum sequence length in word pieces.")
    max_train_samples: int | None = arg(None, help="Use only the first N training examples (quick runs).")
    max_eval_samples: int | None = arg(None, help="Use only the first N dev examples (quick runs).")
    max_test_samples: int | None = arg(None, help="--do_test scores only the first N test examples (blocks for lm; "
                                       "quick runs); --do_infer always predicts every one.")

    def __post_init__(self):
        if self.max_length < 8:
            raise ArgumentError(f"--max_length {self.max_length}: expected at least 8 word pieces")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ArgumentError(f"--{name} {value}: expected a positive number of examples")


@dataclass
class TrainingArguments:
    do_train: bool = arg(False, help="Train.")
    do_test: bool = arg(False, help="Score the test split (needs gold labels, e.g. CoNLL) with the best model.")
    do_infer: bool = arg(False, help="Write test-set predictions (GLUE submission files) with the best model.")
    eval_model_path: str | None = arg(None, help="Model to use for --do_test/--do_infer instead of OUTPUT_DIR/best.")
    per_device_train_batch_size: int = arg(32, help="Training batch size per process.")
    per_device_eval_batch_size: int = arg(32, help="Evaluation batch size per process.")
    learning_rate: float = arg(1e-5, help="Peak learning rate of AdamW.")
    weight_decay: float = arg(1e-2, help="Weight decay (not applied to biases and to any normalisation layer's weights).")
    num_train_epochs: float = arg(25, help="Training epochs.")
    max_steps: int | None = arg(None, help="Stop after this many optimizer steps (overrides epochs for the schedule).")
    num_patience_epochs: float = arg(3, help="Stop after this many epochs without a better dev score.")
    num_grad_accum_steps: int = arg(1, help="Batches accumulated per optimizer step.")
    lr_scheduler_type: str = arg("linear", help="Learning-rate schedule.", choices=LR_SCHEDULERS)
    warmup_proportion: float = arg(0.1, help="Fraction of the optimizer steps spent warming up.")
    max_grad_norm: float = arg(1.0, help="Gradient clipping norm (0 disables clipping).")
    log_interval: int = arg(1000, help="Evaluate on the whole dev set every N optimizer steps.")
    save_steps: int = arg(500, help="Write the resumable state every N optimizer steps (and at each epoch end).")
    selection_metric: str | None = arg(None, help="Dev metric that selects the best checkpoint (default: the task's).")
    group_by_length: bool = arg(False, help="Batch examples of similar length together (less padding, faster).")
    gradient_checkpointing: bool = arg(False, help="Recompute each layer's activations in backward instead of "
                                       "keeping them: less memory, about a third more compute.")
    report_to: str = arg("none", choices=("none", "tensorboard"),
                         help="Also log losses, learning rate and every evaluated metric (per width for MiniDisc) "
                         "as TensorBoard scalars in each stage's tensorboard/ folder (needs the tensorboard package).")
    torch_compile: bool = arg(False, help="torch.compile every transformer layer (dynamic shapes): fused kernels "
                              "after a compilation of a minute or more; see docs/runs.md for what it gives.")

    def __post_init__(self):
        positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "num_grad_accum_steps",
                    "log_interval", "save_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} {getattr(self, name)}: expected a positive integer")
        if self.learning_rate <= 0:
            raise ArgumentError(f"--learning_rate {self.learning_rate}: expected a positive number")
        if not 0.0 <= self.warmup_proportion < 1.0:
            raise ArgumentError(f"--warmup_proportion {self.warmup_proportion}: expected a fraction in [0, 1)")
        if self.num_train_epochs <= 0 and self.max_steps is None:
            raise ArgumentError(f"--num_train_epochs {self.num_train_epochs}: expected a positive number")
        if self.max_steps is not None and self.max_steps < 1:
            raise ArgumentError(f"--max_steps {self.max_steps}: expected a positive integer")
        if self.num_patience_epochs <= 0:
            raise ArgumentError(f"--num_patience_epochs {self.num_patience_epochs}: expected a positive number")
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ArgumentError("--report_to tensorboard needs the tensorboard package: "
                                "pip install -r requirements-extras.txt")
        if not (self.do_train or self.do_test or self.do_infer):
            raise ArgumentError("nothing to do: pass --do_train, --do_test and/or --do_infer")


@dataclass
class DistillationArguments:
    teacher_model_path: str = arg(help="Fine-tuned (and, for sS students, sparsified) teacher directory.")
    objective: str = arg("auto", help="auto: the model family's default (BERT: hidden_kd; T5 and decoders: see "
                         "docs/scripts.md); hidden_kd: hidden-state MSE + logit KD, no gold labels (MiniDisc's); "
                         "logit_kd: logit KD alone; hidden_cos: logit KD + a scale-free hidden-state term "
                         "(1 - cosine per token, weighted as the logit term); kd: logit KD + task loss; "
                         "language models (--task_name lm): lm_kd, the per-token KL from the teacher's next-token "
                         "distribution, and lm_kd_cos, that + the hidden_cos state term.",
                         choices=("auto", "hidden_kd", "logit_kd", "hidden_cos", "kd", "lm_kd", "lm_kd_cos"))
    kd_temperature: float = arg(1.0, help="Softmax temperature of logit distillation (--objective kd and logit_kd).")
    teacher_cache_mb: float = arg(2048.0, help="Memory (MiB, on the training device) for the frozen teacher's "
                                  "logits and selected states per training example, reused from the second epoch "
                                  "on instead of a teacher forward; 0 turns the cache off (it is always off "
                                  "under --fsdp).")
    lm_loss_weight: float = arg(0.0, help="Language models: add this weight times the data's own next-token "
                                "cross-entropy to the distillation loss (0: the teacher's distribution alone).")

    def __post_init__(self):
        if self.lm_loss_weight < 0:
            raise ArgumentError(f"--lm_loss_weight {self.lm_loss_weight}: expected 0 or a positive weight")
        if self.kd_temperature <= 0:
            raise ArgumentError(f"--kd_temperature {self.kd_temperature}: expected a positive number")
        check_temperature(self.objective, self.kd_temperature)
        if self.teacher_cache_mb < 0:
            raise ArgumentError(f"--teacher_cache_mb {self.teacher_cache_mb}: expected 0 (off) or a positive size")


@dataclass
class ScheduleArguments:
    target_sparsity: int = arg(90, help="Sparsity of the final student (a key of the teacher's sparsity map).")
    trunc_sparsity: int = arg(50, help="Smallest candidate sparsity considered for the assistant.")
    target_iteration: int = arg(2, help="Distillation stages: assistants inserted + 1.")
    lam: float = arg(0.2, help="λ of the λ-tradeoff τ(s) = P(s) + λ·s/100.")
    final_student: str = arg("sandwich", help="sandwich: the last iteration trains every width ≥ the assistant's and "
                             "selects on the target (reference); alone: distil assistant → student alone.",
                             choices=("sandwich", "alone"))
    export_all: bool = arg(False, help="Also save each width's best as a standalone densified checkpoint "
                           "(every trained width is then evaluated, not only those a choice reads).")
    sandwich_sample: int | None = arg(None, help="Sampled sandwich: each step trains the sparsest and the least "
                                      "sparse candidate plus K others drawn at random (default: every candidate).")
    search_max_steps: int | None = arg(None, help="Optimizer steps of each iteration that chooses an assistant "
                                       "(the sandwich over every candidate); the final student's iteration keeps "
                                       "--max_steps or the epochs. Default: the same budget for every iteration.")
    search_eval_samples: int | None = arg(None, help="Score the candidate assistants on a fixed random subset of N "
                                          "dev examples (the same subset in every run and seed); the student is "
                                          "scored on the whole dev set. Default: every dev example.")
    record_predictions: bool = arg(False, help="Append each evaluated width's dev predictions at every evaluation "
                                   "to iter_k/dev_predictions.jsonl (benchmarks/compare_schedules.py measures from "
                                   "them how few dev examples keep the choice).")

    def __post_init__(self):
        for name in ("target_sparsity", "trunc_sparsity"):
            if not 0 <= getattr(self, name) <= 99:
                raise ArgumentError(f"--{name} {getattr(self, name)}: expected a sparsity between 0 and 99")
        if self.trunc_sparsity > self.target_sparsity:
            raise ArgumentError(f"--trunc_sparsity {self.trunc_sparsity} is above --target_sparsity "
                                f"{self.target_sparsity}: no candidate assistant would remain")
        if self.target_iteration < 1:
            raise ArgumentError(f"--target_iteration {self.target_iteration}: expected at least 1")
        if self.lam < 0:
            raise ArgumentError(f"--lam {self.lam}: expected λ ≥ 0")
        if self.search_max_steps is not None and self.search_max_steps < 1:
            raise ArgumentError(f"--search_max_steps {self.search_max_steps}: expected a positive integer")
        if self.search_eval_samples is not None and self.search_eval_samples < 1:
            raise ArgumentError(f"--search_eval_samples {self.search_eval_samples}: expected a number of dev "
                                "examples, 1 or more")
        if self.sandwich_sample is not None and self.sandwich_sample < 0:
            raise ArgumentError(f"--sandwich_sample {self.sandwich_sample}: expected the number of middle widths "
                                "per step, 0 or more")


def _flag_type(annotation):
    """The argparse ``type`` for a field annotation (``int | None`` -> int)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"typing": typing}, {})  # noqa: S307 - our own annotations only
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


@dataclass
class DistillScriptArguments:
    """The argument groups of every script that distils from a teacher; each script adds its own group."""

    run: RunArguments
    model: ModelArguments
    distill: DistillationArguments
    data: DataArguments
    training: TrainingArguments
    task: TaskSpec | None = field(init=False, default=None)

    def complete(self) -> None:
        """Fill in what the teacher checkpoint decides (reads its config): see :func:`complete_task`. ``auto``
        becomes the family's objective here, so the run records (and is fingerprinted by) the real one."""
        self.task = complete_task(self.model, self.data, self.distill.teacher_model_path, "--teacher_model_path",
                                  self.training, dry_run=self.run.dry_run)
        self.distill.objective = resolve_objective(self.distill.objective, get_model_class(self.model.model_type))
        check_temperature(self.distill.objective, self.distill.kd_temperature)
        check_objective_task(self.distill, self.task)


def _init_fields(cls) -> list[dataclasses.Field]:
    """The fields of a dataclass that are flags (those set by ``__init__``)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def build_parser(groups, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one argument group per dataclass in ``groups``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    seen = set()
    for group_cls in groups:
        group = parser.add_argument_group(group_cls.__name__)
        for f in _init_fields(group_cls):
            if f.name in seen:
                raise TypeError(f"flag --{f.name} is defined by two argument groups")
            seen.add(f.name)
            kind = _flag_type(f.type)
            kwargs = {"help": f.metadata.get("help", "")}
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if kind is bool:
                group.add_argument(f"--{f.name}", action="store_true", **kwargs)
                continue
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
                kwargs["help"] += f" (default: {f.default})"
            group.add_argument(f"--{f.name}", type=kind, **kwargs)
    return parser


def parse_args(script_cls, argv=None, description: str = ""):
    """Parse ``argv`` into an instance of ``script_cls``, a dataclass whose fields are argument groups.

    Each group is built from its flags (its ``__post_init__`` checks run), then ``script_cls`` from
    the groups (its ``__post_init__`` checks the rules that span groups). A value that cannot work exits
    with status 2 and one line naming the flag. Parsing reads no file: what a checkpoint decides (the
    model and data types, the objective ``auto`` stands for) is filled in by the script's
    ``args.complete()``, which ``main()`` calls next.

    Example::

        @dataclass
        class Arguments:
            run: RunArguments
            data: DataArguments

        args = parse_args(Arguments, ["--output_dir", "out", "--task_name", "sst2"])
        args.data.task_name
    """
    groups = typing.get_type_hints(script_cls)
    groups = {f.name: groups[f.name] for f in _init_fields(script_cls)}
    parser = build_parser(groups.values(), description)
    values = vars(parser.parse_args(argv))
    try:
        built = {name: cls(**{f.name: values[f.name] for f in _init_fields(cls)}) for name, cls in groups.items()}
        return script_cls(**built)
    except USER_ERRORS as err:
        parser.error(str(err))


def flag_values(args) -> dict:
    """``{flag name: value}`` over every group of a parsed ``args`` (what ``args.json`` records)."""
    return {f.name: getattr(group, f.name)
            for g in _init_fields(type(args)) for group in (getattr(args, g.name),) for f in _init_fields(type(group))}


def complete_task(model: ModelArguments, data: DataArguments, checkpoint: str, checkpoint_flag: str,
                  training: TrainingArguments | None = None, dry_run: bool = False) -> TaskSpec:
    """The task of ``--task_name``, with what depends on it filled in or checked.

    ``--data_type`` and ``--model_type`` default to what the task and the checkpoint's architecture
    call for (a given value must fit them); ``--selection_metric`` defaults to the task's. Under
    ``dry_run`` the checkpoint may also be a published config name (:mod:`utils.command.planner`).

    Raises:
        ArgumentError / StageError: a flag that does not fit the task, or a checkpoint that cannot be used.
    """
    task = get_task(data.task_name)
    if dry_run:
        checkpoint_type = load_plan_config(checkpoint, checkpoint_flag).model_type
    else:
        checkpoint_type = check_model_path(checkpoint, checkpoint_flag)
    wanted = model_type_for(checkpoint_type, task)
    if model.model_type is None:
        model.model_type = wanted
    elif model.model_type != wanted:
        raise ArgumentError(f"--model_type {model.model_type} does not fit task {task.name} ({task.kind}) and "
                            f"{checkpoint}; use {wanted}, or leave it out")
    wanted = get_model_class(model.model_type).data_type
    if data.data_type is None:
        data.data_type = wanted
    elif data.data_type != wanted:
        raise ArgumentError(f"--data_type {data.data_type} does not fit task {task.name} ({task.kind}) and "
                            f"--model_type {model.model_type}; use {wanted}, or leave it out")
    if training is not None:
        training.selection_metric = validate_selection_metric(task, training.selection_metric)
    return task
