"""The index object (:class:`VectorIndex`): a FAISS index plus its sidecar, placed on a device.

Vectors are L2-normalised before they enter an index and queries before they search it, so the
inner product (``METRIC_INNER_PRODUCT``) is the cosine similarity the retrieval protocol of Chen
et al. (CVPR 2021) ranks by. Scores returned are cosines; FAISS ids are positions ``0..count-1``
and :meth:`VectorIndex.search` maps them to store rows. A flat index searches by the faster exact
path for the device (:func:`ccl_cache.search.exact.choose_exact_backend`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import torch

from ccl_cache import hardware
from ccl_cache.errors import ConfigError, IndexMismatchError
from ccl_cache.search.exact import EXACT_BACKENDS, ScreenedGallery, choose_exact_backend, l2_normalize, topk_exact
from ccl_cache.search.index_types import IndexSpec
from ccl_cache.search.sidecar import IndexMeta

GPU_MAX_K = 2048  # FAISS GPU k-selection handles at most this many results per query


# --------------------------------------------------------------------------------------------
# Device placement


_GPU_RESOURCES: dict[int, Any] = {}


def _faiss_gpu_available() -> bool:
    return faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_gpu")


def _place(index: faiss.Index, spec: IndexSpec, device: str, notes: list[str]) -> tuple[faiss.Index, bool]:
    """Move ``index`` to a FAISS GPU when asked/allowed and possible; say why not otherwise."""
    hardware.resolve_device(device)  # "cuda" without a GPU: refused, not noted
    wants_gpu = device == "auto" or device.startswith("cuda")
    if not wants_gpu:
        return index, False
    if not _faiss_gpu_available():
        # Quiet for "auto" on a CPU-only machine; say it when a GPU was asked for or is there.
        if device != "auto" or torch.cuda.is_available():
            notes.append("FAISS has no GPU support here (faiss-cpu, or no GPU visible): using the CPU; "
                         "install faiss-gpu-cu12 for GPU indexes")
        return index, False
    if not spec.gpu_ok:
        notes.append(f"{spec.factory} has no FAISS GPU implementation: using the CPU")
        return index, False
    gpu_no = int(device.split(":", 1)[1]) if ":" in device else 0
    # One resource object (memory pool, streams) per GPU for the process, as FAISS advises; the
    # module-level dict also keeps it alive as long as any index placed with it.
    if gpu_no not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu_no] = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    # IVF-PQ's lookup tables live in one block's shared memory (48 KiB): PQ64x8 in float32 needs
    # 64 KiB and the clone is refused (faiss issue #1178); float16 tables need half.
    options.useFloat16LookupTables = "PQ" in spec.factory
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu_no], gpu_no, index, options), True


def _set_search_params(index: faiss.Index, on_gpu: bool, nprobe: int | None, ef_search: int | None) -> None:
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError as exc:
            raise ConfigError(f"{name}={value} does not apply to this index ({exc}); drop the option") from None


# --------------------------------------------------------------------------------------------
# The index object


class VectorIndex:
    """A FAISS index plus its sidecar; :meth:`search` answers with cosines and store rows."""

    def __init__(self, index: faiss.Index, meta: IndexMeta, device: str = "cpu", on_gpu: bool = False,
                 notes: Sequence[str] = ()) -> None:
        self.index = index
        self.meta = meta
        self.on_gpu = on_gpu
        self.notes = list(notes)
        self._rows = np.asarray(meta.rows, dtype=np.int64)
        self._torch_device = hardware.resolve_device(device)
        # Measured lazily (choose_exact_backend times the CPU paths once per process).
        self._exact_backend: str | None = None if meta.index_type == "flat" else "faiss"
        self._gallery: torch.Tensor | None = None
        self._screened: ScreenedGallery | None = None

    @property
    def exact_backend(self) -> str:
        """How searches run: ``"faiss"``, or for a flat index the faster exact path on this
        machine (``"torch"`` on CUDA, ``"screened"`` where bfloat16 GEMMs are fast); settable."""
        if self._exact_backend is None:
            self._exact_backend = choose_exact_backend(self.on_gpu, self._torch_device, self.dim, self.count)
        return self._exact_backend

    @exact_backend.setter
    def exact_backend(self, value: str) -> None:
        if value not in EXACT_BACKENDS:
            raise ConfigError(f"exact backend {value!r} is not one of {', '.join(EXACT_BACKENDS)}")
        if value != "faiss" and (self.meta.index_type != "flat" or self.on_gpu):
            raise ConfigError(f"the {value!r} exact path needs a flat index held on the CPU; this one is "
                              f"{self.meta.index_type}{' on the GPU' if self.on_gpu else ''}")
        if value == "screened" and self._torch_device.type != "cpu":
            raise ConfigError("the 'screened' exact path runs on the CPU; use 'torch' on a CUDA device")
        self._exact_backend = value

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def count(self) -> int:
        return self.meta.count

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change IVF ``nprobe`` / HNSW ``efSearch`` (also recorded when the index is saved)."""
        _set_search_params(self.index, self.on_gpu, nprobe, ef_search)
        self.meta = replace(self.meta, nprobe=nprobe if nprobe is not None else self.meta.nprobe,
                            ef_search=ef_search if ef_search is not None else self.meta.ef_search)

    def _flat_vectors(self) -> torch.Tensor:
        if self._gallery is None:
            # Zero-copy view of IndexFlatIP's (already normalised) vectors, then onto the device.
            flat = faiss.rev_swig_ptr(self.index.get_xb(), self.count * self.dim).reshape(self.count, self.dim)
            self._gallery = torch.from_numpy(flat).to(self._torch_device)
        return self._gallery

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine matches per query: ``(scores (Q, k) float32, rows (Q, k) int64)``.

        Scores are cosines (approximations of them for PQ-compressed indexes), best first.
        ``rows`` are store rows. ``k`` beyond the index's size is cut to it before anything is
        allocated (a user's ``--k 1000000000`` asks for every vector, not for gigabytes of padding);
        when an IVF probe finds fewer, the tail is padded with row ``-1`` and score ``-inf``.
        """
        q = l2_normalize(queries)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"queries have dimension {q.shape[1]} but the index holds {self.dim}-d "
                                     f"vectors ({self.meta.source or 'unknown source'}); embed the queries "
                                     "with the same model")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = min(int(k), self.count)
        if not np.isfinite(q).all():
            raise ConfigError("queries contain NaN or infinite values; check the embeddings of those queries")
        if self.exact_backend == "torch":
            scores, ids = topk_exact(q, self._flat_vectors(), k, self._torch_device, assume_normalized=True)
        elif self.exact_backend == "screened":
            if self._screened is None:
                self._screened = ScreenedGallery(self._flat_vectors())
            scores, ids = self._screened.search(q, k)
        else:
            if self.on_gpu and k > GPU_MAX_K:
                raise ConfigError(f"k={k} exceeds the {GPU_MAX_K} results per query that FAISS searches on a GPU; "
                                  f"ask for k <= {GPU_MAX_K}, or load the index with device='cpu'")
            scores, ids = self.index.search(q, k)
        pad = k - ids.shape[1]
        if pad:
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        missing = ids < 0
        rows = np.where(missing, -1, self._rows[np.maximum(ids, 0)])
        scores = np.where(missing, np.float32(-np.inf), scores).astype(np.float32)
        return scores, rows

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.faiss`` + ``index.json`` into ``directory`` atomically; return the directory."""
        # Imported here: ccl_cache.search.index builds VectorIndex objects, so it imports this module.
        from ccl_cache.search.index import save_index

        return save_index(self, directory, overwrite)
