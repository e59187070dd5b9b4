"""ccl-cache: audio-visual knowledge distillation with cached teacher embeddings.

Implements "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning"
(Chen, Xian, Koepke, Shan, Akata, CVPR 2021) as a toolkit: teachers run once into a
Zarr/HDF5 store, a video student is distilled from the cached embeddings, and FAISS
indexes the result. See README.md for the pipeline and the map of the rooms ("Layout"), and
docs/api.md for their contracts.
"""

__version__ = "0.1.0"

from ccl_cache.errors import CclCacheError  # noqa: E402  (re-exported for users)

__all__ = ["CclCacheError", "__version__"]
