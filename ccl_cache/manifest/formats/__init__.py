"""The listing formats, one module each; importing this package registers them all in READERS.

A format is a reader ``reader(ctx: _Context, **options) -> (items, classes)`` decorated with
``@READERS.register("<name>")`` (plumbing in :mod:`ccl_cache.manifest.parse`). To add one, write
``formats/<name>.py`` and import its reader below (and name it in ``__all__``); ``--format`` and
``load_manifest(format=...)`` pick it up from the registry.
"""

from ccl_cache.manifest.formats.activitynet import read_activitynet
from ccl_cache.manifest.formats.folder import VIDEO_EXTENSIONS, read_folder
from ccl_cache.manifest.formats.generic_csv import read_generic_csv
from ccl_cache.manifest.formats.ucf101 import read_ucf101
from ccl_cache.manifest.formats.vggsound import read_vggsound
from ccl_cache.manifest.formats.webdataset import read_webdataset
from ccl_cache.manifest.parse import READERS

__all__ = [
    "READERS", "VIDEO_EXTENSIONS", "read_activitynet", "read_folder", "read_generic_csv", "read_ucf101",
    "read_vggsound", "read_webdataset",
]
