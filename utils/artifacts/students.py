"""Students: what ``--layer_or_sparsity`` and ``--layer_or_sparsity_path`` describe, parsed once into
typed values, and the student each one builds from a teacher."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from utils.artifacts.model_io import check_model_task, load_model
from utils.errors import ArgumentError, StageError

STUDENT_SPEC = re.compile(r"^(-?\d+)([LS])$")
CHAIN = re.compile(r"^\d+(,\d+)*[LS]$")


@dataclass(frozen=True)
class StudentSpec:
    """One student: the teacher's bottom ``layers`` layers, its slice at ``sparsity`` percent, or the
    model saved at ``path`` (exactly one is set).

    >>> StudentSpec.parse("90S"), str(StudentSpec(sparsity=90))
    (StudentSpec(layers=None, sparsity=90, path=None), '90S')
    """

    layers: int | None = None
    sparsity: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.layers is not None:
            return f"{self.layers}L"
        return f"{self.sparsity}S" if self.sparsity is not None else str(self.path)

    @classmethod
    def parse(cls, text: str, flag: str = "--layer_or_sparsity") -> StudentSpec:
        """``"4L"`` → 4 layers; ``"90S"`` → sparsity 90; an existing directory → that path.

        Raises:
            ArgumentError: for anything else, naming the flag value and the expected forms.
        """
        match = STUDENT_SPEC.match(text.strip())
        if match:
            value, unit = int(match.group(1)), match.group(2)
            if unit == "S" and not 0 <= value <= 99:
                raise ArgumentError(f"{flag} {text}: a sparsity must be between 0 and 99 percent")
            if unit == "L" and value < 1:
                raise ArgumentError(f"{flag} {text}: a student needs at least one layer")
            return cls(layers=value) if unit == "L" else cls(sparsity=value)
        if Path(text).is_dir():
            return cls(path=text)
        raise ArgumentError(f"{flag} {text!r}: expected kL (keep k layers), sS (sparsity s%, e.g. 90S) "
                            "or a directory holding a student model")


@dataclass(frozen=True)
class Chain:
    """A chain of students, each distilled from the one before, ending in the final student: ``80,90S`` is
    teacher → 80S → 90S, ``6,4L`` teacher → 6L → 4L. Written as on the command line by ``str``.

    >>> chain = Chain.parse("80,90S"); str(chain), [str(s) for s in chain.assistants]
    ('80,90S', ['80S'])
    """

    students: tuple[StudentSpec, ...]

    def __str__(self) -> str:
        last = self.students[-1]
        values = [spec.layers if last.layers is not None else spec.sparsity for spec in self.students]
        return ",".join(map(str, values)) + ("L" if last.layers is not None else "S")

    def __iter__(self):
        return iter(self.students)

    def __len__(self) -> int:
        return len(self.students)

    @property
    def assistants(self) -> tuple[StudentSpec, ...]:
        """The teacher assistants: every student before the final one."""
        return self.students[:-1]

    @property
    def target(self) -> StudentSpec:
        return self.students[-1]

    @classmethod
    def parse(cls, text: str) -> Chain:
        """``"80,90S"`` → 80S then 90S; layers must decrease and sparsities increase along a chain.

        Raises:
            ArgumentError: naming ``--layer_or_sparsity_path`` and what was expected.
        """
        compact = text.replace(" ", "")
        if not CHAIN.match(compact):
            raise ArgumentError(f"--layer_or_sparsity_path {text!r}: expected comma-separated numbers ending in L or S, "
                                "e.g. 80,90S or 6,4L")
        unit, values = compact[-1], [int(v) for v in compact[:-1].split(",")]
        steps = list(zip(values, values[1:], strict=False))
        if unit == "S" and any(b <= a for a, b in steps):
            raise ArgumentError(f"--layer_or_sparsity_path {text}: sparsities must increase along the path")
        if unit == "L" and any(b >= a for a, b in steps):
            raise ArgumentError(f"--layer_or_sparsity_path {text}: layer counts must decrease along the path")
        if unit == "S" and values[-1] > 99:
            raise ArgumentError(f"--layer_or_sparsity_path {text}: a sparsity must be between 0 and 99")
        return cls(tuple(StudentSpec(layers=v) if unit == "L" else StudentSpec(sparsity=v) for v in values))


def check_sparsity_available(model, sparsity: int, path, flag: str = "--layer_or_sparsity") -> None:
    """Raise a clear error unless ``model`` can be sparsified to ``sparsity``."""
    levels = model.available_sparsities()
    if not model.config.sparsity_map or levels == [model.config.sparsity]:
        raise StageError(f"{path} has no sparsity map: run run_sparsification.py on it first")
    if sparsity not in levels:
        raise StageError(f"{flag} {sparsity}S: {path} has no map entry for {sparsity}; available: "
                         f"{', '.join(map(str, levels))}")


def build_student(model_type: str, teacher_path: str, spec: StudentSpec, task):
    """The student ``spec`` describes, initialised from the teacher (or loaded from its directory).

    ``kL`` keeps the teacher's bottom k layers; ``sS`` slices the teacher per its sparsity map and
    densifies (physically smaller tensors); a directory is loaded as is.
    """
    if spec.path is not None:
        student = load_model(model_type, spec.path)
        check_model_task(student, task, spec.path)
        return student
    student = load_model(model_type, teacher_path)
    if spec.layers is not None:
        layers = student.depth
        if spec.layers > layers:
            raise StageError(f"--layer_or_sparsity {spec}: the teacher {teacher_path} has only {layers} layers")
        student.drop_layers(spec.layers)
    else:
        check_sparsity_available(student, spec.sparsity, teacher_path)
        student.sparsify(spec.sparsity)
        student.densify()
    return student


def describe_model(model) -> dict:
    """Sparsity, layers, kept heads/neurons and parameter counts (prunable encoder and total)."""
    counts = model.count_parameters()
    widths = model.kept_widths()
    return {
        "sparsity": model.current_sparsity,
        "num_layers": model.depth,
        "heads_kept": model.heads_in_use(),
        "neurons_kept": sum(widths["neuron"]),
        "prunable_parameters": counts["prunable"],
        "total_parameters": counts["total"],
    }
