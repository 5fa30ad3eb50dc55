"""Training objectives, chosen by name and handed to the one loop in :mod:`utils.loop`.

An objective turns a batch into one or more losses. The loop calls ``prepare(batch)`` once per
batch (the teacher's forward pass, under ``no_grad``), then ``loss(model, module, batch, i)`` for
each of the ``num_passes`` passes and runs ``backward`` after each one, so that only one pass's
activations are alive at a time. MiniDisc's sandwich is one pass per candidate sparsity.

Losses (T is the temperature; ``SCE(a, b) = -mean Σ_c softmax(b)_c log softmax(a)_c``):

* ``ft``        task loss: cross-entropy, MSE for regression, token cross-entropy for NER;
* ``kd``        ½ [T² SCE(z_s/T, z_t/T) + task loss]      (regression: ½ [MSE(z_s, z_t) + MSE(z_s, y)]);
* ``hidden_kd`` ½ [MSE(H_s, H_t) + SCE(z_s, z_t)], no gold labels (regression: ½ [MSE(H) + MSE(z_s, z_t)]);
  ``H`` stacks the hidden states selected by :func:`layer_pairs` at non-padding tokens.

Each loss is a mean over its terms (real tokens for ``MSE(H)``, scored words for token tasks,
examples otherwise). Under several processes each process's mean is weighted by its share of all
processes' terms (:func:`process_shares`), so that DistributedDataParallel's gradient average is the
gradient of one mean over the global batch: N processes train as one, whatever the lengths.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from utils.sharding import is_sharded

OBJECTIVES = ("ft", "kd", "hidden_kd")


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
    logits (words of a token task, else examples) and gold ``labels`` (not -100)."""
    size = batch["input_ids"].shape[0]
    labels = batch.get("labels")
    return {
        "tokens": int(batch["attention_mask"].sum()),
        "scored": int(batch["label_mask"].sum()) if "label_mask" in batch else size,
        "labels": int((labels != -100).sum()) if labels is not None and labels.dim() == 2 else size,
    }


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

    def finish(self, module) -> None:
        """Restore anything the passes changed on the model (e.g. its sparsity)."""

    def frozen_models(self) -> list:
        """Models the objective runs but does not train (a teacher), to shard alongside the student."""
        return []

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the objective's own random draws (none here)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class TaskObjective(Objective):
    """Fine-tuning: the task loss against gold labels."""

    def prepare(self, batch):
        self._shares = process_shares(loss_terms(batch), batch["input_ids"].device)

    def loss(self, model, module, batch, pass_index):
        if "labels" not in batch:
            raise ValueError("the training data has no gold labels; the ft objective needs them")
        return _forward(model, batch).loss * self._shares["labels"]


class DistillObjective(Objective):
    """Distillation from a frozen teacher: ``kd`` (logits + task loss) or ``hidden_kd`` (MiniDisc)."""

    def __init__(self, teacher, kind: str = "hidden_kd", temperature: float = 1.0, regression: bool = False):
        if kind not in ("kd", "hidden_kd"):
            raise ValueError(f"unknown distillation objective {kind!r}; expected 'kd' or 'hidden_kd'")
        self.teacher = teacher.eval()
        self.kind = kind
        self.temperature = temperature
        self.regression = regression
        self.needs_labels = kind == "kd"
        self._teacher_out = None
        self._teacher_states = {}

    def frozen_models(self):
        return [self.teacher]

    @torch.no_grad()
    def prepare(self, batch):
        self._shares = process_shares(loss_terms(batch), batch["input_ids"].device)
        self._teacher_out = _forward(self.teacher, {k: v for k, v in batch.items() if k != "labels"})
        # The teacher's gathered hidden states per layer selection, shared by every pass of a sandwich.
        self._teacher_states = {}

    def loss(self, model, module, batch, pass_index, embedding_output=None):
        """``embedding_output``: the student's :meth:`embed` output to reuse (see :class:`SandwichObjective`)."""
        teacher = self._teacher_out
        student = _forward(model, batch if self.kind == "kd" else {k: v for k, v in batch.items() if k != "labels"},
                           embedding_output)
        zs, zt = _scored(student.logits, batch), _scored(teacher.logits, batch)
        if self.regression:
            logit_loss = F.mse_loss(zs.float().squeeze(-1), zt.float().squeeze(-1))
        else:
            logit_loss = soft_cross_entropy(zs, zt, self.temperature if self.kind == "kd" else 1.0)
        logit_loss = logit_loss * self._shares["scored"]
        if self.kind == "kd":
            if student.loss is None:
                raise ValueError("the kd objective needs gold labels, and the training data has none")
            return 0.5 * (logit_loss + student.loss * self._shares["labels"])
        pairs = layer_pairs(len(student.hidden_states) - 1, len(teacher.hidden_states) - 1)
        key = tuple(j for _, j in pairs)
        if key not in self._teacher_states:
            self._teacher_states[key] = gather_states(teacher.hidden_states, key, batch["attention_mask"])
        hidden_loss = hidden_mse(student.hidden_states, teacher.hidden_states, pairs, batch["attention_mask"],
                                 self._teacher_states[key])
        return 0.5 * (hidden_loss * self._shares["tokens"] + logit_loss)


class SandwichObjective(Objective):
    """MiniDisc's sandwich: every candidate sparsity of a weight-sharing supernet, one backward each.

    Pass i slices the supernet to ``sparsities[i]`` and returns ``base.loss / len(sparsities)``; the
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

    def __init__(self, base: DistillObjective, sparsities: list[int], rest_sparsity: int,
                 sample: int | None = None, seed: int = 0):
        if not sparsities:
            raise ValueError("the sandwich needs at least one sparsity")
        if sample is not None and sample < 0:
            raise ValueError(f"sample {sample}: expected the number of middle widths per step, at least 0")
        self.base = base
        self.sparsities = sorted(sparsities, reverse=True)
        self.rest_sparsity = rest_sparsity
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

    def loss(self, model, module, batch, pass_index):
        module.sparsify(self._passes[pass_index])
        embedding_output = self._shared_embeddings(module, batch, pass_index)
        return self.base.loss(model, module, batch, pass_index, embedding_output) / self.num_passes

    def _shared_embeddings(self, module, batch, pass_index):
        """Pass ``pass_index``'s embedding output: a detached leaf before the last pass, the real one then."""
        if self.num_passes == 1 or is_sharded(module):
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

    def finish(self, module):
        module.sparsify(self.rest_sparsity)
