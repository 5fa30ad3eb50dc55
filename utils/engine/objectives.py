"""Training objectives, chosen by name and handed to the one loop in :mod:`utils.engine.loop`.

An objective turns a batch into one or more losses. The loop calls ``prepare(batch)`` once per
batch (the teacher's forward pass, under ``no_grad``), then ``loss(model, module, batch, i)`` for
each of the ``num_passes`` passes and runs ``backward`` after each one, so that only one pass's
activations are alive at a time. MiniDisc's sandwich is one pass per candidate sparsity.

Losses (T is the temperature; ``SCE(a, b) = -mean Σ_c softmax(b)_c log softmax(a)_c``):

* ``ft``        task loss: cross-entropy, MSE for regression, token cross-entropy for NER;
* ``kd``        ½ [T² SCE(z_s/T, z_t/T) + task loss]      (regression: ½ [MSE(z_s, z_t) + MSE(z_s, y)]);
* ``hidden_kd`` ½ [MSE(H_s, H_t) + SCE(z_s, z_t)], no gold labels (regression: ½ [MSE(H) + MSE(z_s, z_t)]);
  ``H`` stacks the hidden states selected by :func:`layer_pairs` at non-padding tokens. The
  reference's objective: well scaled on post-LayerNorm BERT, whose states are of order one.
* ``logit_kd``  T² SCE(z_s/T, z_t/T), no gold labels (regression: MSE(z_s, z_t)): the teacher's
  logits alone (Minitron's choice for width pruning).
* ``hidden_cos`` logit_kd + α · mean (1 − cos(h_s, h_t)) over the same states, per token, α = L_logit /
  L_hidden detached, so the state term weighs as much as the logit term whatever its scale. Scale-free
  for pre-norm models (T5, decoders), whose states are the raw residual stream with a few channels
  thousands of times the median; decoders also leave out each sequence's first token, where those
  "massive activations" sit.
* ``lm_kd``     language models: the per-token KL from the teacher's next-token distribution, chunked over
  tokens, computed in the student's forward (:class:`~utils.engine.distillation.LMDistillObjective`);
  ``lm_kd_cos`` adds the ``hidden_cos`` state term.

``auto`` (the default of ``--objective``) is the model family's ``distill_objective``
(:func:`resolve_objective`), chosen by the measured table in docs/results.md.

The teacher is frozen and sees the same examples every epoch, so its outputs can be served from a
:class:`TeacherCache` (logits and selected states per example, within a memory budget) instead of
a forward pass per batch.

Each loss is a mean over its terms (real tokens for ``MSE(H)``, scored words for token tasks,
examples otherwise). Under several processes each process's mean is weighted by its share of all
processes' terms (:func:`process_shares`), so that DistributedDataParallel's gradient average is the
gradient of one mean over the global batch: N processes train as one, whatever the lengths.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from utils.engine.teacher_cache import TeacherCache
from utils.errors import ArgumentError

OBJECTIVES = ("ft", "kd", "hidden_kd", "logit_kd", "hidden_cos", "lm_kd", "lm_kd_cos")
DISTILL_OBJECTIVES = ("hidden_kd", "logit_kd", "hidden_cos", "kd")
LM_OBJECTIVES = ("lm_kd", "lm_kd_cos")


def check_temperature(objective: str, temperature: float) -> None:
    """Refuse a ``--kd_temperature`` that ``objective`` would ignore (those matching logits at T = 1)."""
    if objective in ("hidden_kd", "hidden_cos") and temperature != 1.0:
        raise ArgumentError(f"--kd_temperature {temperature} is not used by --objective {objective}, which matches "
                            "logits at temperature 1 (as the reference); use --objective kd or logit_kd, or drop it")


def check_objective_task(distill_args, task) -> None:
    """Refuse an objective that does not fit the task (the language-model ones for ``lm`` only, and only they),
    and ``--lm_loss_weight`` without a language model."""
    lm = distill_args.objective in LM_OBJECTIVES
    if lm != task.is_lm_task:
        wanted = ", ".join(LM_OBJECTIVES) if task.is_lm_task else "hidden_kd, logit_kd, hidden_cos or kd"
        raise ArgumentError(f"--objective {distill_args.objective} does not fit task {task.name}: use {wanted}")
    if distill_args.lm_loss_weight and not lm:
        raise ArgumentError(f"--lm_loss_weight {distill_args.lm_loss_weight} is for language models "
                            "(--task_name lm); drop it")


def resolve_objective(name: str, teacher) -> str:
    """``name``, or for ``auto`` the teacher family's ``distill_objective`` (``hidden_kd`` if it declares none).

    >>> resolve_objective("kd", None)
    'kd'
    """
    if name != "auto":
        return name
    return getattr(teacher, "distill_objective", "hidden_kd")


def select_hidden_layers(num_layers: int) -> list[int]:
    """Hidden-state indices matched in distillation: {0, k, 2k, ..., L} with k = max(1, L // 6).

    Index 0 is the embedding output and index i the output of layer i. The last layer is always
    included, and models with fewer than 6 layers use every layer (the reference divided by zero).

    >>> select_hidden_layers(12)
    [0, 2, 4, 6, 8, 10, 12]
    >>> select_hidden_layers(4)
    [0, 1, 2, 3, 4]
    """
    if num_layers < 1:
        raise ValueError(f"a model needs at least one layer, got {num_layers}")
    step = max(1, num_layers // 6)
    indices = list(range(0, num_layers + 1, step))
    if indices[-1] != num_layers:
        indices.append(num_layers)
    return indices


def layer_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student index, teacher index) pairs of hidden states to match.

    The student's selected indices are mapped uniformly onto the teacher's depth, so a 6-layer
    student of a 12-layer teacher pairs student state i with teacher state 2i, and a sparsified
    12-layer student pairs states one to one.

    >>> layer_pairs(12, 12)[:3]
    [(0, 0), (2, 2), (4, 4)]
    >>> layer_pairs(4, 12)
    [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    """
    if student_layers > teacher_layers:
        raise ValueError(f"a student with {student_layers} layers is deeper than its {teacher_layers}-layer teacher")
    return [(i, round(i * teacher_layers / student_layers)) for i in select_hidden_layers(student_layers)]


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """T² · mean over rows of -Σ softmax(z_t/T) · log softmax(z_s/T); logits are [N, C]."""
    t = temperature
    target = F.softmax(teacher_logits.float() / t, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / t, dim=-1)
    return -(target * log_probs).sum(-1).mean() * (t * t)


def gather_states(hidden_states, indices, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden states ``indices`` (of a tuple of [B, T, H], or a model's ``HiddenStates``) at
    non-padding tokens: [len(indices), N, H]."""
    if hasattr(hidden_states, "at_tokens"):
        return torch.stack([hidden_states.at_tokens(i, attention_mask) for i in indices]).float()
    keep = attention_mask.bool()
    return torch.stack([hidden_states[i][keep] for i in indices]).float()


def hidden_mse(student_hidden, teacher_hidden, pairs, attention_mask: torch.Tensor,
               teacher_states: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the paired hidden states at non-padding tokens.

    ``student_hidden``/``teacher_hidden`` are tuples of [B, T, H]; the mean runs over tokens ×
    selected layers × hidden units, with no per-layer weight. ``teacher_states`` is the teacher side
    already gathered by :func:`gather_states` (then ``teacher_hidden`` is not read).
    """
    s = gather_states(student_hidden, [i for i, _ in pairs], attention_mask)
    t = teacher_states if teacher_states is not None else gather_states(
        teacher_hidden, [j for _, j in pairs], attention_mask)
    return F.mse_loss(s, t)


def hidden_cosine(student_states: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
    """Mean over layers and tokens of 1 − cos(h_s, h_t); states are [layers, N, H] (scale-free per token).

    >>> round(hidden_cosine(torch.ones(1, 2, 3), -2 * torch.ones(1, 2, 3)).item(), 6)
    2.0
    """
    return (1 - F.cosine_similarity(student_states.float(), teacher_states.float(), dim=-1, eps=1e-8)).mean()


def first_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: each row's first real token (left or right padding).

    >>> first_token_mask(torch.tensor([[0, 1, 1], [1, 1, 0]])).long().tolist()
    [[0, 1, 0], [1, 0, 0]]
    """
    real = attention_mask.bool()
    return real & (attention_mask.long().cumsum(-1) == 1)


def global_mean(local_mean: torch.Tensor, count: int) -> torch.Tensor:
    """The mean over every process's terms of a per-process mean of ``count`` terms (itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local_mean
    total = torch.stack([local_mean.detach().double() * count, torch.tensor(float(count), dtype=torch.float64,
                                                                           device=local_mean.device)])
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).to(local_mean.dtype)


def process_shares(counts: dict[str, int], device) -> dict[str, float]:
    """``{name: world_size · count / Σ_processes count}`` for each count of loss terms on this process.

    A per-process mean multiplied by its share, then averaged over processes (as DDP averages
    gradients), equals the mean over every process's terms. Every process must call this for the
    same batches (it all-reduces the counts). All 1.0 in a single process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict.fromkeys(counts, 1.0)
    local = torch.tensor(list(counts.values()), dtype=torch.float64, device=device)
    total = local.clone()
    dist.all_reduce(total)
    world = dist.get_world_size()
    return {name: world * c / t if t > 0 else 0.0
            for name, c, t in zip(counts, local.tolist(), total.tolist(), strict=True)}


def loss_terms(batch) -> dict[str, int]:
    """How many terms each loss of ``batch`` averages: real ``tokens`` (hidden-state MSE), ``scored``
    logits (words of a token task, else examples) and gold ``labels`` (not -100; a language model's are its
    next tokens, the first position predicting none)."""
    size = batch["input_ids"].shape[0]
    labels = batch.get("labels")
    if labels is not None and labels.dim() == 2:
        targets = labels if "label_mask" in batch else labels[:, 1:]
        count = int((targets != -100).sum())
    else:
        count = size
    return {
        "tokens": int(batch["attention_mask"].sum()),
        "scored": int(batch["label_mask"].sum()) if "label_mask" in batch else size,
        "labels": count,
    }


def _scored_counts(batch) -> list[int]:
    """How many scored logits each example of ``batch`` has: its words for token tasks, else one."""
    if "label_mask" in batch:
        return batch["label_mask"].sum(-1).tolist()
    return [1] * batch["input_ids"].shape[0]


def _scored(logits: torch.Tensor, batch) -> torch.Tensor:
    """Logits at scored positions: [B, C] for sequence tasks, [N_words, C] for token tasks."""
    if logits.dim() == 3:
        return logits[batch["label_mask"]]
    return logits


def _forward(model, batch, embedding_output=None):
    extra = {} if embedding_output is None else {"embedding_output": embedding_output}
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"], labels=batch.get("labels"), **extra)


class Objective:
    """Base objective: one pass per batch, no teacher."""

    num_passes = 1
    needs_labels = True

    def prepare(self, batch) -> None:
        """Work shared by every pass of a batch (e.g. the teacher forward)."""

    def loss(self, model, module, batch, pass_index: int) -> torch.Tensor:
        """The loss of pass ``pass_index``; ``model`` may be DDP-wrapped, ``module`` is the bare model."""
        raise NotImplementedError

    def width(self, pass_index: int) -> int | None:
        """The sparsity pass ``pass_index`` trains the model at (the loop slices the model to it for the pass's
        forward and backward, and back afterwards), or None: the model's own."""
        return None

    def frozen_models(self) -> list:
        """Models the objective runs but does not train (a teacher), to shard alongside the student."""
        return []

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the objective's own random draws (none here)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def stats(self) -> dict:
        """JSON-able facts for the stage's results (e.g. how often the teacher cache served a batch)."""
        return {}


class TaskObjective(Objective):
    """Fine-tuning: the task loss against gold labels."""

    def prepare(self, batch):
        self._shares = process_shares(loss_terms(batch), batch["input_ids"].device)

    def loss(self, model, module, batch, pass_index):
        if "labels" not in batch:
            raise ValueError("the training data has no gold labels; the ft objective needs them")
        return _forward(model, batch).loss * self._shares["labels"]


class DistillObjective(Objective):
    """Distillation from a frozen teacher: ``hidden_kd`` (MiniDisc's), ``logit_kd``, ``hidden_cos`` or ``kd``.

    ``skip_first_token`` leaves each sequence's first real token out of the ``hidden_cos`` term (decoders:
    their attention-sink position). ``cache``: serve the teacher's outputs from a :class:`TeacherCache`
    when the batch carries ``example_index`` (the loop adds it) and the run is not ``sharded`` (under FSDP2
    a teacher's forward is a collective that every process must run).
    """

    def __init__(self, teacher, kind: str = "hidden_kd", temperature: float = 1.0, regression: bool = False,
                 skip_first_token: bool = False, cache: TeacherCache | None = None, sharded: bool = False):
        if kind not in DISTILL_OBJECTIVES:
            raise ValueError(f"unknown distillation objective {kind!r}; expected one of {DISTILL_OBJECTIVES}")
        self.teacher = teacher.eval()
        self.kind = kind
        self.temperature = temperature
        self.regression = regression
        self.skip_first_token = skip_first_token and kind == "hidden_cos"
        self.cache = cache
        self.sharded = sharded
        self.needs_labels = kind == "kd"
        self._teacher_out = None
        self._teacher_logits = None
        self._teacher_states = {}
        self._key = None  # the teacher states the student reads (known after the first loss)

    def frozen_models(self):
        return [self.teacher]

    def stats(self):
        if self.cache is None:
            return {}
        return {"teacher_cache": {"batches_served": self.cache.hits, "batches_computed": self.cache.misses,
                                  "mib": round(self.cache.used / 2**20, 1)}}

    @property
    def uses_states(self) -> bool:
        return self.kind in ("hidden_kd", "hidden_cos")

    @torch.no_grad()
    def prepare(self, batch):
        counts = loss_terms(batch)
        if self.skip_first_token:
            counts["tokens"] -= int(first_token_mask(batch["attention_mask"]).sum())
        self._shares = process_shares(counts, batch["input_ids"].device)
        self._teacher_out, self._teacher_states = None, {}
        self._indices = self._cacheable(batch)
        cached = None if self._indices is None else self.cache.lookup(
            self._indices, self._key if self.uses_states else None)
        if cached is not None:
            self._teacher_logits = cached[0]
            if cached[1] is not None:
                self._teacher_states[self._key] = cached[1]
            return
        self._teacher_out = _forward(self.teacher, {k: v for k, v in batch.items() if k != "labels"})
        self._teacher_logits = _scored(self._teacher_out.logits, batch)
        if self._indices is not None:
            self.cache.store_logits(self._indices, self._teacher_logits, _scored_counts(batch))

    def _cacheable(self, batch) -> list[int] | None:
        if self.cache is None or "example_index" not in batch or self.sharded:
            return None
        return batch["example_index"].tolist()

    def _teacher_hidden(self, key: tuple, batch) -> torch.Tensor:
        """The teacher's states ``key`` at the batch's real tokens: [len(key), N, H]."""
        if key not in self._teacher_states:
            if self._teacher_out is None:  # served from the cache, but for another selection of states
                with torch.no_grad():
                    self._teacher_out = _forward(self.teacher, {k: v for k, v in batch.items() if k != "labels"})
            with torch.no_grad():
                self._teacher_states[key] = gather_states(self._teacher_out.hidden_states, key,
                                                          batch["attention_mask"])
            if self._indices is not None:
                self.cache.store_states(self._indices, key, self._teacher_states[key],
                                        batch["attention_mask"].sum(-1).tolist())
        self._key = key
        return self._teacher_states[key]

    def _logit_loss(self, zs: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        if self.regression:
            loss = F.mse_loss(zs.float().squeeze(-1), zt.float().squeeze(-1))
        else:
            loss = soft_cross_entropy(zs, zt, self.temperature if self.kind in ("kd", "logit_kd") else 1.0)
        return loss * self._shares["scored"]

    def loss(self, model, module, batch, pass_index, embedding_output=None):
        """``embedding_output``: the student's :meth:`embed` output to reuse (see :class:`SandwichObjective`)."""
        student = _forward(model, batch if self.kind == "kd" else {k: v for k, v in batch.items() if k != "labels"},
                           embedding_output)
        logit_loss = self._logit_loss(_scored(student.logits, batch), self._teacher_logits)
        if self.kind == "kd":
            if student.loss is None:
                raise ValueError("the kd objective needs gold labels, and the training data has none")
            return 0.5 * (logit_loss + student.loss * self._shares["labels"])
        if self.kind == "logit_kd":
            return logit_loss
        pairs = layer_pairs(len(student.hidden_states) - 1, self.teacher.depth)
        teacher_states = self._teacher_hidden(tuple(j for _, j in pairs), batch)
        if self.kind == "hidden_kd":
            hidden_loss = hidden_mse(student.hidden_states, None, pairs, batch["attention_mask"], teacher_states)
            return 0.5 * (hidden_loss * self._shares["tokens"] + logit_loss)
        student_states = gather_states(student.hidden_states, [i for i, _ in pairs], batch["attention_mask"])
        if self.skip_first_token:
            rows = ~first_token_mask(batch["attention_mask"])[batch["attention_mask"].bool()]
            student_states, teacher_states = student_states[:, rows], teacher_states[:, rows]
        hidden_loss = hidden_cosine(student_states, teacher_states)
        # α = L_logit / L_hidden over the global batch, detached: the state term weighs as the logit term.
        logit_mean = global_mean(logit_loss.detach() / self._shares["scored"], loss_terms(batch)["scored"])
        hidden_mean = global_mean(hidden_loss.detach(), int(student_states.shape[1]))
        alpha = logit_mean / hidden_mean if float(hidden_mean) > 0 else torch.zeros_like(logit_mean)
        return logit_loss + alpha * hidden_loss * self._shares["tokens"]


class SandwichObjective(Objective):
    """MiniDisc's sandwich: every candidate sparsity of a weight-sharing supernet, one backward each.

    Pass i trains the supernet at the width ``sparsities[i]`` and returns ``base.loss / len(sparsities)``; the
    loop backpropagates each pass before the next, so one slice's activations are freed before the
    next one runs, and takes one optimizer step for all of them. The sparsest slice runs first:
    under DistributedDataParallel only the last pass synchronises gradients, and the least sparse
    slice uses every weight any sparser one does.

    The embeddings (before their dropout) are the same at every sparsity, so they are computed once
    per batch: the earlier passes backpropagate into a detached copy, and the last pass carries the
    sum of those gradients into the embedding weights, which are backpropagated once instead of
    once per pass (each pass still draws its own embedding dropout).

    ``sample`` K (the sampled sandwich rule): each batch trains the sparsest and the least sparse
    candidate plus K others drawn without replacement, from a generator seeded with ``seed`` (the
    same draws on every process; its state is saved with a resumable run). The loss is still divided
    by the number of passes, so every step's gradient is a mean over the widths it trained.
    """

    def __init__(self, base: DistillObjective, sparsities: list[int], sample: int | None = None, seed: int = 0):
        if not sparsities:
            raise ValueError("the sandwich needs at least one sparsity")
        if sample is not None and sample < 0:
            raise ValueError(f"sample {sample}: expected the number of middle widths per step, at least 0")
        self.base = base
        self.sparsities = sorted(sparsities, reverse=True)
        self.sample = None if sample is None or sample + 2 >= len(self.sparsities) else sample
        self.generator = torch.Generator().manual_seed(seed)
        self.num_passes = len(self.sparsities) if self.sample is None else self.sample + 2
        self.needs_labels = base.needs_labels
        self._passes = self.sparsities

    def prepare(self, batch):
        self.base.prepare(batch)
        self._embedded = self._detached = None
        self._passes = self.draw()

    def draw(self) -> list[int]:
        """The sparsities of the next batch's passes, sparsest first: all of them, or the sampled rule's."""
        if self.sample is None:
            return self.sparsities
        middle = self.sparsities[1:-1]
        chosen = sorted(torch.randperm(len(middle), generator=self.generator)[:self.sample].tolist())
        return [self.sparsities[0], *(middle[i] for i in chosen), self.sparsities[-1]]

    def state_dict(self):
        return {"generator": self.generator.get_state()} if self.sample is not None else {}

    def load_state_dict(self, state):
        if self.sample is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def frozen_models(self):
        return self.base.frozen_models()

    def stats(self):
        return self.base.stats()

    def width(self, pass_index):
        return self._passes[pass_index]

    def loss(self, model, module, batch, pass_index):
        embedding_output = self._shared_embeddings(module, batch, pass_index)
        return self.base.loss(model, module, batch, pass_index, embedding_output) / self.num_passes

    def _shared_embeddings(self, module, batch, pass_index):
        """Pass ``pass_index``'s embedding output: a detached leaf before the last pass, the real one then."""
        if self.num_passes == 1 or self.base.sharded:
            return None  # sharded: the embeddings are gathered only inside the model's forward
        if pass_index == 0:
            self._embedded = module.embed(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            self._detached = self._embedded.detach().requires_grad_()
        if pass_index < self.num_passes - 1:
            return self._detached
        embedded, detached = self._embedded, self._detached
        self._embedded = self._detached = None
        if detached.grad is not None:
            embedded.register_hook(lambda grad: grad + detached.grad)
        return embedded
