"""Inference: the teachers built on the device, fingerprinted with the extraction policy, and run
over decoded clips (:class:`TeacherRunner`: batched ``torch.inference_mode`` forward passes,
finiteness and range checks, a clip that breaks its batch isolated). Where the teachers compute
(``channels_last`` on CPU, autocast under ``amp``) is described in the ``ccl_cache.extract``
package docstring. torch is imported inside the functions that use it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ccl_cache import hardware
from ccl_cache.errors import ConfigError
from ccl_cache.extract.config import AUDIO_PADDING, FRAME_DECODE, FRAME_SAMPLING, FRAME_TIMES, ExtractConfig
from ccl_cache.extract.decode import AUDIO_STREAM, DecodedClip, Failure

if TYPE_CHECKING:
    import torch

    from ccl_cache.teachers import Teacher

log = logging.getLogger(__name__)

FLOAT16_MAX = 65504.0


@dataclass
class TeacherRows:
    """One teacher's output for the rows of a chunk that it computed."""

    rows: np.ndarray  # (R,) absolute row numbers
    embedding: np.ndarray  # (R, D) or (R, K, D) float32
    times: np.ndarray  # (R, K, 2) float64 (K = 1 for clip-level audio)
    mask: np.ndarray  # (R,) or (R, K) bool
    failures: dict[int, Failure] = field(default_factory=dict)
    missing: set[int] = field(default_factory=set)  # rows without an audio stream


class TeacherRunner:
    """Runs one teacher over decoded clips: batched forward passes, finiteness and range checks.

    ``slots`` is K (frames per clip for images, audio segments for segmented audio) or None for
    clip-level audio. Inputs of equal shape are batched, ``max_items`` frames/waves at a time;
    a batch that raises is retried item by item so one bad clip does not fail its neighbours.
    """

    def __init__(self, key: str, teacher: "Teacher", device: str, *, amp: bool, dtype: str,
                 slots: int | None, segment_seconds: float | None = None, max_items: int = 256) -> None:
        self.key, self.teacher, self.device = key, teacher, device
        self.amp, self.dtype, self.slots = amp, dtype, slots
        self.segment_seconds, self.max_items = segment_seconds, max_items
        self.modality = teacher.modality

    def run(self, clips: Sequence[DecodedClip]) -> TeacherRows:
        k = self.slots or 1
        rows = np.array([c.row for c in clips], dtype=np.int64)
        emb = np.zeros((len(clips), k, self.teacher.dim), dtype=np.float32)
        times = np.zeros((len(clips), k, 2), dtype=np.float64)
        mask = np.zeros((len(clips), k), dtype=bool)
        out = TeacherRows(rows, emb, times, mask)
        units = self._units(clips, out)
        results = self._forward_units([u[2] for u in units])
        for (i, slot, _), result in zip(units, results):
            row = int(rows[i])
            if isinstance(result, Failure):
                out.failures.setdefault(row, dataclasses.replace(result, coverage=clips[i].coverage))
            else:
                emb[i, slot], mask[i, slot] = result, True
        for i, clip in enumerate(clips):  # a failed part fails the whole row: no half-valid rows
            if clip.row in out.failures:
                emb[i], mask[i] = 0.0, False
        if self.slots is None:
            out.embedding, out.mask = emb[:, 0], mask[:, 0]
        return out

    def _units(self, clips: Sequence[DecodedClip], out: TeacherRows) -> list[tuple[int, int | slice, "torch.Tensor"]]:
        """(clip index, slot(s), prepared input) of every input to embed; records failures/missing.

        An image unit is a clip's K frames and fills all K slots; an audio unit is one clip or segment.
        """
        units: list[tuple[int, int | slice, torch.Tensor]] = []
        for i, clip in enumerate(clips):
            failure = clip.failures.get(self.modality)
            if failure is None and self.modality == "audio" and (not clip.has_audio or clip.audio is None):
                out.missing.add(clip.row)
                continue
            try:
                if failure is None and self.modality == "image":
                    assert clip.frames is not None and clip.frame_times is not None
                    out.times[i, :, 0] = out.times[i, :, 1] = clip.frame_times
                    units.append((i, slice(None), self.teacher.prepare(clip.frames)))
                elif failure is None:
                    units.extend(self._audio_units(i, clip, out))
            except Exception as exc:  # noqa: BLE001 - input the teacher refuses: this clip fails
                failure = Failure("teacher", "teacher-error", f"teacher {self.key}: {type(exc).__name__}: {exc}")
            if failure is not None:
                # A decode failure carries its own coverage ("partial-audio": the audio's); others the clip's.
                coverage = clip.coverage if failure.coverage is None else failure.coverage
                out.failures[clip.row] = dataclasses.replace(failure, coverage=coverage)
        return units

    def _audio_units(self, i: int, clip: DecodedClip, out: TeacherRows) -> list[tuple[int, int | slice, "torch.Tensor"]]:
        assert clip.audio is not None
        start, end = clip.window
        if self.segment_seconds is None:
            out.times[i, 0] = (start, end)
            return [(i, 0, self.teacher.prepare(clip.audio))]
        rate = int(self.teacher.preprocess.sample_rate or 0)
        seg = max(1, round(self.segment_seconds * rate))
        count = min(self.slots or 1, max(1, clip.audio.size // seg))
        units: list[tuple[int, int | slice, torch.Tensor]] = []
        for j in range(count):
            piece = clip.audio[j * seg : (j + 1) * seg] if clip.audio.size >= seg else clip.audio
            t0 = start + j * self.segment_seconds
            out.times[i, j] = (t0, min(end, t0 + piece.size / rate))
            units.append((i, j, self.teacher.prepare(piece)))
        return units

    def _forward_units(self, inputs: list["torch.Tensor"]) -> list[np.ndarray | Failure]:
        """Embed every input; same-shape inputs share batches (no padding: it changes pooling)."""
        results: list[np.ndarray | Failure | None] = [None] * len(inputs)
        groups: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for idx, x in enumerate(inputs):
            groups[tuple(x.shape)].append(idx)
        for shape, members in groups.items():
            per_item = shape[0] if self.modality == "image" else 1
            step = max(1, self.max_items // per_item)
            for b in range(0, len(members), step):
                batch = members[b : b + step]
                for idx, result in zip(batch, self._forward_batch([inputs[m] for m in batch])):
                    results[idx] = result
        return results  # type: ignore[return-value]

    def _forward_batch(self, xs: list["torch.Tensor"]) -> list[np.ndarray | Failure]:
        import torch

        out_of_memory = False
        try:
            y = self._forward(xs)
        except torch.AcceleratorError:
            # The device is unusable (illegal address, device-side assert): every later clip would
            # fail too and be marked done. Stop; a resume redoes the unfinished chunk.
            raise
        except torch.OutOfMemoryError:
            out_of_memory = True  # handled below, once the traceback no longer pins the batch's memory
        except Exception as exc:  # noqa: BLE001 - isolate the clip that breaks the batch
            if len(xs) > 1:
                return [r for x in xs for r in self._forward_batch([x])]
            return [Failure("teacher", "teacher-error", f"teacher {self.key}: {type(exc).__name__}: {exc}")]
        if out_of_memory:
            return self._after_out_of_memory(xs)
        return [self._check(item) for item in y]

    def _after_out_of_memory(self, xs: list["torch.Tensor"]) -> list[np.ndarray | Failure]:
        """Halve the batch for this and every later chunk; a single input that does not fit fails."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        per_item = xs[0].shape[0] if self.modality == "image" else 1
        if len(xs) == 1:
            return [Failure("teacher", "teacher-error", f"teacher {self.key}: out of device memory on one clip "
                            f"alone ({per_item} input(s)); use a device with more memory or --device cpu")]
        self.max_items = min(self.max_items, len(xs) // 2 * per_item)
        log.warning("teacher %s: out of device memory on %d inputs; batches of at most %d from now on",
                    self.key, len(xs), self.max_items // per_item)
        results: list[np.ndarray | Failure] = []
        while len(results) < len(xs):  # the size is re-read each time: an inner failure lowers it
            step = max(1, self.max_items // per_item)
            results += self._forward_batch(xs[len(results) : len(results) + step])
        return results

    def _forward(self, xs: list["torch.Tensor"]) -> np.ndarray:
        import torch

        x = torch.stack(xs).to(self.device, non_blocking=True)
        lead = x.shape[:2] if self.modality == "image" else x.shape[:1]
        if self.modality == "image":
            x = x.flatten(0, 1)  # (B, K, 3, S, S) -> (B*K, 3, S, S)
        use_amp, amp_dtype = self._autocast(x.device)
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=use_amp):
            y = self.teacher(x)
        return y.float().reshape(*lead, -1).cpu().numpy()

    def _autocast(self, device: "torch.device") -> tuple[bool, "torch.dtype"]:
        """(enabled, dtype) of autocast for this runner's teacher (see ``autocast_dtype``)."""
        import torch

        dtype = autocast_dtype(self.modality, self.amp, device)
        return dtype is not None, dtype or torch.float32

    def _check(self, y: np.ndarray) -> np.ndarray | Failure:
        if not np.all(np.isfinite(y)):
            return Failure("teacher", "teacher-nonfinite", f"teacher {self.key} returned NaN/inf for this clip")
        if self.dtype == "float16" and float(np.abs(y).max(initial=0.0)) > FLOAT16_MAX:
            return Failure(
                "teacher", "teacher-nonfinite",
                f"teacher {self.key}: embedding values exceed the float16 range; use --dtype float32",
            )  # fmt: skip
        return y



def _teacher_options(name: str, modality: str, config: ExtractConfig) -> dict[str, Any]:
    return {"image_size": config.image_size} if modality == "image" else {}


def teacher_dim_hint(name: str, modality: str, config: ExtractConfig) -> int | None:
    """The embedding size of a registered teacher, from its architecture (no weights loaded)."""
    from ccl_cache.teachers import TEACHERS
    from ccl_cache.teachers.base import call_factory

    if name not in TEACHERS:
        return None  # a user factory may load weights itself: size it after building
    return int(call_factory(TEACHERS.get(name), _teacher_options(name, modality, config), name).dim)


def build_teachers(config: ExtractConfig, device: str) -> dict[str, "Teacher"]:
    """modality -> teacher, in eval mode on ``device``; a teacher of the wrong modality is refused."""
    import torch

    from ccl_cache.teachers import build_teacher

    teachers = {}
    for modality, name, weights in (
        ("audio", config.audio_teacher, config.audio_weights),
        ("image", config.image_teacher, config.image_weights),
    ):
        if name is None:
            continue
        teacher = build_teacher(name, weights, device, **_teacher_options(name, modality, config))
        if torch.device(device).type == "cpu":
            # oneDNN's convolutions are faster on NHWC (see the package docstring); values are the
            # same up to float rounding (measured ≤ 3e-7 relative).
            teacher.to(memory_format=torch.channels_last)
        if teacher.modality != modality:
            raise ConfigError(
                f"teacher {name!r} is an {teacher.modality} teacher but was given as the {modality} "
                f"teacher; pass it with --{teacher.modality}-teacher"
            )
        teachers[modality] = teacher
    return teachers


def autocast_dtype(modality: str, amp: bool, device: "torch.device | str") -> "torch.dtype | None":
    """The dtype a teacher computes in under ``amp``, or None for float32 (autocast off).

    bfloat16 where the GPU or CPU has it, else float16 on GPUs and float32 on CPUs (emulated
    bfloat16 would be slower than float32). float16 is not used for audio teachers: a log-mel
    power spectrum (up to ~1e5 for loud audio) overflows float16 and the embedding turns to inf.
    """
    import torch

    device = torch.device(device)
    if not amp or device.type not in ("cpu", "cuda"):
        return None
    if device.type == "cpu":
        return torch.bfloat16 if hardware.cpu_has_bf16() else None
    if hardware.cuda_has_bf16(device):
        return torch.bfloat16
    return torch.float16 if modality == "image" else None


def teacher_fingerprint(teacher: "Teacher", config: ExtractConfig, slots: int | None,
                        device: str = "cpu") -> dict[str, Any]:
    """The teacher's fingerprint plus the extraction policy that shaped its inputs and outputs."""
    policy: dict[str, Any] = {"dtype": config.dtype}
    compute = autocast_dtype(teacher.modality, config.amp, device)
    if compute is not None:
        # Rows computed in bfloat16 and float32 must not share a store. Recorded only when
        # autocast is on, so float32 stores (all those made before the field) keep resuming.
        policy.update(compute=str(compute).removeprefix("torch."))
    if teacher.modality == "image":
        policy.update(frames_per_clip=config.frames_per_clip, frame_times=FRAME_TIMES, frame_decode=FRAME_DECODE)
        if config.frame_sampling != FRAME_SAMPLING[0]:
            # Recorded only when not the default: stores made before the option existed hold
            # "spread" frames without the field, and must keep resuming with the default.
            policy.update(frame_sampling=config.frame_sampling)
    else:
        # audio_padding: stores made before the partial-audio rule hold zero-padded embeddings of
        # clips the rule now fails; the field makes resuming one of them a refused mismatch.
        policy.update(audio="segments" if config.audio_segment else "clip",
                      segment_seconds=config.audio_segment, segments=slots, audio_stream=AUDIO_STREAM,
                      audio_padding=AUDIO_PADDING)  # fmt: skip
    return {**teacher.fingerprint(), "extraction": policy}

