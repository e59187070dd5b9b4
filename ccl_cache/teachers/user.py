"""Your own teacher, named ``"package.module:factory"`` wherever a teacher name is accepted.

The protocol
------------
``build_teacher("mypkg.teachers:make_teacher", weights, device, **options)`` imports
``mypkg.teachers`` (it must be importable: installed, or its folder on ``PYTHONPATH``), looks up
``make_teacher`` (a dotted attribute such as ``Factory.create`` is fine) and calls it with the
``options`` as keyword arguments. The factory returns either

1. a :class:`ccl_cache.teachers.Teacher` (build one with ``Teacher(name=..., arch=...,
   backbone=module, dim=..., preprocess=Preprocess(...))`` or subclass it and override
   ``forward``), or
2. a pair ``(module, preprocess)``: an ``nn.Module`` mapping a batch to ``(B, D)`` embeddings
   and a :class:`ccl_cache.teachers.Preprocess`. ccl-cache wraps it in a ``Teacher`` named after
   the factory; ``D`` is ``module.dim`` when it has one, otherwise found by one forward pass on
   zeros (1 s of audio, or one ``image_size`` square image).

Inputs follow the built-in teachers: audio modules receive ``(B, S)`` float32 mono waveforms at
``preprocess.sample_rate``; image modules receive ``(B, 3, S, S)`` frames that ccl-cache has
resized, centre-cropped and normalised with ``preprocess.mean``/``std``.

Weights: when ``weights`` is a file, it is loaded (safely, ``weights_only=True``) into the
module (``Teacher.backbone``) with strict key checking, and the fingerprint records its
sha256. When ``weights`` is None/"none", the factory's own weights are kept and recorded as
``"factory:<spec>"`` (or, for a returned ``Teacher``, whatever its ``weights`` attribute says).
The store compares that label only, so if your factory's weights can change, pass them as a file.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import nn

from ccl_cache.errors import TeacherError
from ccl_cache.teachers.base import AUDIO, Preprocess, Teacher, call_factory
from ccl_cache.teachers.weights import apply_weights, is_random_spec

_FORM = "'package.module:callable' (for example 'mypkg.teachers:make_teacher')"


def is_user_spec(name: str) -> bool:
    """True when ``name`` names a factory to import rather than a registered teacher."""
    return ":" in name


def import_factory(spec: str) -> Callable[..., Any]:
    """Import the callable named by ``"package.module:attr[.attr...]"``."""
    module_name, _, attr_path = spec.rpartition(":")
    if not module_name or not attr_path:
        raise TeacherError(f"teacher {spec!r}: expected {_FORM}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TeacherError(
            f"teacher {spec!r}: cannot import module {module_name!r} ({exc}); install the package "
            f"or add its folder to PYTHONPATH. Expected {_FORM}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise TeacherError(
                f"teacher {spec!r}: module {module_name!r} has no attribute {attr_path!r}; "
                f"check the name after ':'. Expected {_FORM}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TeacherError(f"teacher {spec!r}: {attr_path!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def build_user_teacher(spec: str, weights: str | None, **options: Any) -> Teacher:
    """Call the factory named by ``spec`` and return a Teacher with ``weights`` applied."""
    factory = import_factory(spec)
    made = call_factory(factory, options, spec)
    if isinstance(made, Teacher):
        teacher = made
        if is_random_spec(weights) and teacher.weights != "random":
            return teacher  # the factory loaded its own weights and said so
    elif (
        isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)
        and isinstance(made[1], Preprocess)
    ):  # fmt: skip
        module, pre = made
        name = spec.rpartition(":")[2].rpartition(".")[2]
        teacher = Teacher(name=name, arch=spec, backbone=module, dim=infer_dim(module, pre, spec), preprocess=pre)
        if is_random_spec(weights):
            teacher.weights = f"factory:{spec}"
            return teacher
    else:
        raise TeacherError(
            f"teacher {spec!r}: the factory returned {type(made).__name__}; expected a Teacher or "
            "a (torch.nn.Module, Preprocess) pair (see ccl_cache.teachers.user)"
        )
    apply_weights(teacher, weights)
    return teacher


def infer_dim(module: nn.Module, pre: Preprocess, spec: str) -> int:
    """``module.dim`` if set, else the width of the output for one zero input."""
    dim = getattr(module, "dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    if pre.modality == AUDIO:
        probe = torch.zeros(1, int(pre.sample_rate))  # type: ignore[arg-type]
    else:
        probe = torch.zeros(1, 3, int(pre.image_size), int(pre.image_size))  # type: ignore[arg-type]
    was_training = module.training
    module.eval()
    try:
        device = next(iter(module.parameters()), torch.zeros(0)).device
        with torch.no_grad():
            out = module(probe.to(device))
    except Exception as exc:  # the user's module failed on a plain input: say which input
        raise TeacherError(
            f"teacher {spec!r}: the module failed on a probe input of shape {tuple(probe.shape)} "
            f"({type(exc).__name__}: {exc}); give it a `dim` attribute or fix its forward"
        ) from exc
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TeacherError(f"teacher {spec!r}: the module returned {shape}; expected (B, D) embeddings")
    return int(out.shape[1])

