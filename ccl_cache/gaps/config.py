"""What a gap scoring run depends on: :class:`GapConfig` (saved beside every output)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ccl_cache.errors import ConfigError


@dataclass(frozen=True)
class GapConfig:
    """How ``ccl-cache gaps`` scores a store's clips for a sound that disagrees with the picture.

    ``method``: a name in :data:`ccl_cache.gaps.METHODS`. ``label_free``: never read the scored
    clips' labels (the ``pretrain`` clips' labels, the teachers' own curated training data, may
    still be read: ``use_pretrain``). ``splits``: the splits scored (empty: every split but
    ``pretrain``). ``teachers``: an audio and an image teacher (bare modalities pick the store's
    only teacher of that modality, as ``distill --teachers`` does). ``folds``: k of the k-fold
    cross-fitting, so that no clip's own sound or label takes part in the model that scores it.
    ``shrinkage``: covariance shrinkage of the linear probes (0 = sample covariance, 1 =
    spherical). ``ridge``: L2 penalty of the cross-modal map, per standardised feature. ``trim``:
    share of the highest-scoring clips of a first pass left out of the second pass's fit (gap
    clips would otherwise teach the models their wrong pairing); 0 = one pass.
    ``use_pretrain``: fit the models on the ``pretrain`` clips too (always clean, labelled).
    ``frame_spread``: a frame-level image teacher's clip vector is its frames' mean *and* their
    per-dimension standard deviation (:func:`ccl_cache.store.vectors.teacher_vectors`), so that
    classes of one appearance that differ in motion are told apart; off: the mean alone.
    """

    method: str = "likelihood"
    label_free: bool = False
    splits: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ("audio", "image")
    folds: int = 5
    seed: int = 0
    shrinkage: float = 0.5
    ridge: float = 10.0
    trim: float = 0.3
    use_pretrain: bool = True
    frame_spread: bool = True

    def validate(self) -> None:
        """ConfigError naming the first bad value and what to pass instead."""
        from ccl_cache.gaps.methods import METHODS

        METHODS.get(self.method)  # ConfigError listing the choices
        checks = [
            (self.folds >= 2, f"folds={self.folds}: need at least 2 (a clip is scored by a model fitted on the others)"),
            (math.isfinite(self.shrinkage) and 0.0 <= self.shrinkage <= 1.0,
             f"shrinkage={self.shrinkage}: expected a fraction in [0, 1]"),
            (math.isfinite(self.ridge) and self.ridge > 0, f"ridge={self.ridge}: expected a positive penalty"),
            (math.isfinite(self.trim) and 0.0 <= self.trim < 1.0, f"trim={self.trim}: expected a fraction in [0, 1)"),
            (sorted(t.split("/", 1)[0] for t in self.teachers) == ["audio", "image"],
             f"teachers {', '.join(self.teachers) or '(none)'}: need one audio and one image teacher "
             "(e.g. audio,image or audio/cnn14,image/resnet34): a gap is a sound that disagrees with its picture"),
            ("pretrain" not in self.splits, "splits: 'pretrain' holds the teachers' clean training clips and is "
             "never scored; name student splits such as train,val,test"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["splits"], data["teachers"] = list(self.splits), list(self.teachers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GapConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"gap config has unknown field(s) {unknown}; expected a subset of {sorted(names)}")
        values = dict(data)
        for name in ("splits", "teachers"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)
