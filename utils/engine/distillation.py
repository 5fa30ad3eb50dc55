"""The objectives a distillation stage is built from (:func:`build_distill_objective`), and the language model's:
:class:`LMDistillObjective`, the per-token KL from the teacher's next-token distribution (``lm_kd``, ``lm_kd_cos``).
The other objectives and the helpers they share are in :mod:`utils.engine.objectives`."""

from __future__ import annotations

import torch

from utils.engine.objectives import (
    LM_OBJECTIVES,
    DistillObjective,
    Objective,
    first_token_mask,
    gather_states,
    global_mean,
    hidden_cosine,
    layer_pairs,
    loss_terms,
    process_shares,
)
from utils.engine.teacher_cache import TeacherCache
from utils.errors import ArgumentError


class LMDistillObjective(Objective):
    """Distillation of a language model (``lm_kd``): the per-token forward KL(teacher ‖ student) of the next-token
    distributions at temperature 1, a mean over real tokens, computed a chunk of tokens at a time
    (:func:`models.outputs.token_kl`: the ``[tokens, vocabulary]`` logits never exist whole, and there is no
    teacher cache). ``lm_kd_cos`` adds ``hidden_cos``'s scale-free state term, weighed as the KL term (α = KL /
    state term, detached), without each sequence's first token when ``skip_first_token``. ``lm_loss_weight`` w adds
    w · the data's next-token cross-entropy (then gold labels are needed).

    The student's forward computes the KL (its head takes part in the forward, as DistributedDataParallel
    expects) from the teacher's last states and output weight, read outside the teacher's forward, which FSDP2
    shards: not under ``--fsdp``.
    """

    def __init__(self, teacher, kind: str = "lm_kd", lm_loss_weight: float = 0.0, skip_first_token: bool = False,
                 sharded: bool = False):
        if kind not in LM_OBJECTIVES:
            raise ValueError(f"unknown language-model objective {kind!r}; expected one of {LM_OBJECTIVES}")
        if sharded:
            raise ArgumentError("--fsdp: language-model distillation reads the teacher's output weight outside its "
                                "forward, where FSDP2 shards it; run it without --fsdp (DDP works)")
        self.teacher = teacher.eval()
        self.kind, self.lm_loss_weight, self.sharded = kind, lm_loss_weight, sharded
        self.skip_first_token = skip_first_token and kind == "lm_kd_cos"
        self.needs_labels = lm_loss_weight > 0

    def frozen_models(self):
        return [self.teacher]

    @torch.no_grad()
    def prepare(self, batch):
        counts = loss_terms(batch)
        if self.skip_first_token:
            counts["states"] = counts["tokens"] - int(first_token_mask(batch["attention_mask"]).sum())
        self._shares = process_shares(counts, batch["input_ids"].device)
        self._teacher = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     logits=False).hidden_states

    def loss(self, model, module, batch, pass_index, embedding_output=None):
        extra = {} if embedding_output is None else {"embedding_output": embedding_output}
        if self.lm_loss_weight:
            extra["labels"] = batch["labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits=False,
                    teacher=(self._teacher[-1], self.teacher.output_weight()), **extra)
        states, real = out.hidden_states, batch["attention_mask"].bool()
        kl = out.distill_loss
        loss = kl * self._shares["tokens"]
        if self.lm_loss_weight:
            loss = loss + self.lm_loss_weight * out.loss * self._shares["labels"]
        if self.kind == "lm_kd_cos":
            pairs = layer_pairs(len(states) - 1, self.teacher.depth)
            student_states = gather_states(states, [i for i, _ in pairs], batch["attention_mask"])
            with torch.no_grad():
                teacher_states = gather_states(self._teacher, [j for _, j in pairs], batch["attention_mask"])
            if self.skip_first_token:
                rows = ~first_token_mask(batch["attention_mask"])[real]
                student_states, teacher_states = student_states[:, rows], teacher_states[:, rows]
            hidden_loss = hidden_cosine(student_states, teacher_states)
            kl_mean = global_mean(kl.detach(), int(real.sum()))
            hidden_mean = global_mean(hidden_loss.detach(), int(student_states.shape[1]))
            alpha = kl_mean / hidden_mean if float(hidden_mean) > 0 else torch.zeros_like(kl_mean)
            share = self._shares["states" if self.skip_first_token else "tokens"]
            loss = loss + alpha * hidden_loss * share
        return loss


def build_distill_objective(teacher, distill_args, regression: bool, sharded: bool):
    """The objective ``--objective`` names (``auto`` was resolved to the family's when the arguments were
    read), with a teacher cache of ``--teacher_cache_mb`` (0: none); decoder families leave their first
    token out of ``hidden_cos``. ``sharded``: the run shards its models (``--fsdp``). A language-model objective
    gives an :class:`LMDistillObjective`."""
    if distill_args.objective in LM_OBJECTIVES:
        return LMDistillObjective(teacher, distill_args.objective, distill_args.lm_loss_weight,
                                  skip_first_token=getattr(teacher, "sink_first_token", False), sharded=sharded)
    budget = int(distill_args.teacher_cache_mb * 2**20)
    return DistillObjective(teacher, distill_args.objective, distill_args.kd_temperature,
                            regression, skip_first_token=getattr(teacher, "sink_first_token", False),
                            cache=TeacherCache(budget) if budget > 0 else None, sharded=sharded)
