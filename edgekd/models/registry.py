"""Name -> constructor registries for teachers and students (timm style).

A registered constructor takes the per-sample input shape(s) instead of the modality spec, so a
model is a function of shapes and hyperparameters only. `create_*` turns specs into shapes, calls
the constructor and stamps the result with:

- `model.arch`: the registry name;
- `model.arch_args`: a JSON-safe dict with `num_classes`, the input shape(s) and every
  constructor keyword (defaults filled in). The exact rebuild calls are

      create_student(model.arch, spec, **model.arch_args)
      create_teacher(model.arch, specs, **model.arch_args)

  (`num_classes` is positional-only, so `create_student(arch, spec, len(labels), **arch_args)`
  also works and checks that the label count still matches.)
  The shapes stored in `arch_args` are checked against `feature_shape` of the given spec(s), so a
  checkpoint rebuilt with a different spec (other window, other n_mels) fails with ConfigError
  instead of loading weights into the wrong architecture.

This module imports no torch: constructors are registered by `edgekd.models.students` and
`edgekd.models.teachers`, which `edgekd.models` imports.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from edgekd.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from edgekd.modalities import ModalitySpec

F = TypeVar("F", bound=Callable[..., Any])

STUDENT_KINDS_DEFAULT: tuple[str, ...] = ("timeseries", "audio")


# `space(trial) -> dict` of constructor keywords: Optuna define-by-run (`trial.suggest_*`), pure and
# cheap (no torch), so a search can draw and price a candidate before building it.
Space = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., torch.nn.Module]
    kinds: tuple[str, ...]  # modality kinds the model accepts
    space: Space | None = None  # the searchable constructor arguments (students)


_TEACHERS: dict[str, _Entry] = {}
_STUDENTS: dict[str, _Entry] = {}


def _register(
    table: dict[str, _Entry],
    role: str,
    name: str,
    kinds: tuple[str, ...],
    space: Space | None = None,
) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        if name in table:
            raise ConfigError(f"{role} {name!r} is registered twice ({table[name].fn} and {fn})")
        table[name] = _Entry(fn, tuple(kinds), space)
        return fn

    return deco


def register_teacher(
    name: str, kinds: tuple[str, ...] = ("timeseries", "audio", "image")
) -> Callable[[F], F]:
    """Register `fn(input_shapes: dict[str, tuple], kinds: dict[str, str], num_classes, **kw)`."""
    return _register(_TEACHERS, "teacher", name, kinds)


def register_student(
    name: str, kinds: tuple[str, ...] = STUDENT_KINDS_DEFAULT, space: Space | None = None
) -> Callable[[F], F]:
    """Register `fn(input_shape: tuple[int, ...], num_classes: int, **kw) -> nn.Module`.

    `space(trial) -> dict`: the student's searchable keywords (a subset of `fn`'s), drawn with
    Optuna's `trial.suggest_categorical` / `suggest_int` only, so the space is finite and
    `edgekd.search.space.enumerate_space` can list it; `edgekd search` tunes these.
    """
    return _register(_STUDENTS, "student", name, kinds, space)


def list_teachers() -> list[str]:
    """Registered teacher names, sorted."""
    return sorted(_TEACHERS)


def teacher_constructor(name: str) -> Callable[..., torch.nn.Module]:
    """The registered constructor of teacher `name` (takes shapes, kinds, num_classes, **kw);
    for composite teachers that build members from stored `arch_args`."""
    return _lookup(_TEACHERS, "teacher", name).fn


def list_students() -> list[str]:
    """Registered student names, sorted."""
    return sorted(_STUDENTS)


def student_kinds(name: str) -> tuple[str, ...]:
    """The modality kinds student `name` accepts."""
    return _lookup(_STUDENTS, "student", name).kinds


def student_space(name: str) -> Space:
    """The search space of student `name` (ConfigError if it declares none)."""
    entry = _lookup(_STUDENTS, "student", name)
    if entry.space is None:
        raise ConfigError(f"student {name!r} declares no search space (register it with space=)")
    return entry.space


def _lookup(table: dict[str, _Entry], role: str, name: str) -> _Entry:
    if name not in table:
        raise ConfigError(
            f"unknown {role} architecture {name!r}; "
            f"registered: {', '.join(sorted(table)) or 'none'}"
        )
    return table[name]


def _json_safe(value: Any, where: str) -> Any:
    """Tuples become lists (as JSON would make them); anything JSON cannot hold is an error."""
    if isinstance(value, tuple | list):
        return [_json_safe(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, where) for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: argument value {value!r} is not JSON-serialisable") from exc
    return value


_FIXED_ARGS = ("input_shape", "input_shapes", "kinds", "num_classes")


def _resolve_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], role: str, name: str
) -> dict[str, Any]:
    """The constructor's hyperparameters with defaults filled in, so `arch_args` stays a full
    record even if a default changes later. Unknown keywords are a config typo: name them."""
    params = inspect.signature(fn).parameters
    accepted = [p for p in params if p not in _FIXED_ARGS]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{role} {name!r} does not take argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    resolved = {p: kwargs.get(p, params[p].default) for p in accepted}
    missing = [p for p, v in resolved.items() if v is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"{role} {name!r} needs argument(s) {', '.join(missing)}")
    return resolved


def _check_stored_shape(stored: Any, actual: tuple[int, ...], what: str) -> None:
    if stored is not None and [int(v) for v in stored] != list(actual):
        raise ConfigError(
            f"{what}: arch_args say input shape {list(stored)} but the modality spec gives "
            f"{list(actual)}; rebuild with the spec the model was trained on"
        )


def _num_classes(positional: int | None, kwargs: dict[str, Any], role: str, name: str) -> int:
    """num_classes given positionally, as a keyword (e.g. from arch_args), or both if they agree."""
    stored = kwargs.pop("num_classes", None)
    if positional is not None and stored is not None and positional != stored:
        raise ConfigError(
            f"{role} {name!r}: arch_args say num_classes={stored} but {positional} were asked for "
            "(do the label names match the ones the model was trained with?)"
        )
    value = positional if positional is not None else stored
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"{role} {name!r}: num_classes must be an int >= 2, got {value!r}")
    return value


def create_student(
    name: str, spec: ModalitySpec, num_classes: int | None = None, /, **kwargs: Any
) -> torch.nn.Module:
    """Build student `name` for one modality; input is `(B, *feature_shape(spec))`.

    `kwargs` may hold `num_classes` and `input_shape` (from a stored `arch_args`); they must agree
    with the positional `num_classes` (when given) and the spec.
    """
    from edgekd.modalities import feature_shape

    entry = _lookup(_STUDENTS, "student", name)
    if spec.kind not in entry.kinds:
        raise ConfigError(
            f"student {name!r} takes modality kinds {', '.join(entry.kinds)}; "
            f"modality {spec.name!r} is {spec.kind!r}"
        )
    num_classes = _num_classes(num_classes, kwargs, "student", name)
    shape = tuple(int(v) for v in feature_shape(spec))
    _check_stored_shape(kwargs.pop("input_shape", None), shape, f"student {name!r}")
    kwargs = _resolve_kwargs(entry.fn, kwargs, "student", name)
    args = _json_safe(kwargs, f"student {name!r}")
    model = entry.fn(input_shape=shape, num_classes=num_classes, **kwargs)
    model.arch = name
    model.arch_args = {"num_classes": num_classes, "input_shape": list(shape), **args}
    return model


def create_teacher(
    name: str, specs: Mapping[str, ModalitySpec], num_classes: int | None = None, /, **kwargs: Any
) -> torch.nn.Module:
    """Build teacher `name` over `specs` (modality name -> spec); input is a dict of tensors.

    `kwargs` may hold `num_classes` and `input_shapes` (from a stored `arch_args`); they must agree
    with the positional `num_classes` (when given) and the specs.
    """
    from edgekd.modalities import feature_shape

    entry = _lookup(_TEACHERS, "teacher", name)
    if not specs:
        raise ConfigError(f"teacher {name!r} needs at least one modality spec")
    bad = [f"{m} ({s.kind})" for m, s in specs.items() if s.kind not in entry.kinds]
    if bad:
        raise ConfigError(
            f"teacher {name!r} takes modality kinds {', '.join(entry.kinds)}; got {', '.join(bad)}"
        )
    num_classes = _num_classes(num_classes, kwargs, "teacher", name)
    shapes = {m: tuple(int(v) for v in feature_shape(s)) for m, s in specs.items()}
    stored = kwargs.pop("input_shapes", None)
    if stored is not None and set(stored) != set(shapes):
        raise ConfigError(
            f"teacher {name!r}: arch_args name modalities {sorted(stored)} but the specs give "
            f"{sorted(shapes)}"
        )
    for m, shape in shapes.items():
        _check_stored_shape(None if stored is None else stored[m], shape, f"teacher {name!r}, {m}")
    kwargs = _resolve_kwargs(entry.fn, kwargs, "teacher", name)
    args = _json_safe(kwargs, f"teacher {name!r}")
    kinds = {m: s.kind for m, s in specs.items()}
    model = entry.fn(input_shapes=shapes, kinds=kinds, num_classes=num_classes, **kwargs)
    model.arch = name
    model.arch_args = {
        "num_classes": num_classes,
        "input_shapes": {m: list(s) for m, s in shapes.items()},
        **args,
    }
    return model
