"""Media reading with PyAV: probe files, read audio windows, frames at given times, and clips.

The contract is docs/api.md, section ``ccl_cache.media``. The rules every reader follows:

* **Times** are seconds relative to the file's start time (the container's first timestamp, the
  earliest of all streams): a file whose first pts is 1.5 s has its first frame at t = 0.0.
  Frame times come from ``pts * time_base`` (variable-frame-rate files exist), never from
  ``index / fps``.
* **Frames** come out as a player shows them: display-matrix rotation applied, RGB uint8,
  resized to ``size = (height, width)`` with one reused swscale context per call (10-bit,
  4:4:4, full-range, gray and alpha sources are all converted by swscale using the frame's own
  colour range and matrix; alpha is dropped).
* **Seeking**: readers seek to the keyframe before a window and decode forward; when the
  keyframe found by the demuxer starts after the asked time (B-frame reordering, imprecise
  indexes) they seek further back until the window is covered. ``read_keyframes`` instead makes
  one pass that decodes keyframes only and answers each time with a keyframe near it.
* **Bounded**: every call has a wall-clock deadline and a packet budget derived from the window
  and the stream's packet rate (generous slack, :class:`DecodeLimits`), opens files with
  ``av.open(timeout=...)`` and gives up after too many decoder errors, so a broken file cannot
  hang a worker. Lenient decoding of damaged data is allowed; the number of packets the decoder
  rejected is reported in :attr:`Frames.decode_errors`.
* **Tar shards**: a path ``<shard>.tar/<member>`` that does not exist on disk names a member of
  an uncompressed tar shard (the WebDataset layout video2dataset writes); every reader decodes it
  in place from the shard's bytes, with the same results as the unpacked file
  (:mod:`ccl_cache.media.tarshard`).
* **Errors**: failures raise :class:`~ccl_cache.errors.MediaError` whose ``reason`` is one of
  ``not-found``, ``not-a-file``, ``empty``, ``unreadable``, ``unsupported``, ``no-video``,
  ``no-audio`` (:class:`~ccl_cache.errors.NoAudioError`, audio readers only), ``stream``,
  ``window``, ``decode``, ``limit``, ``timeout``. No ``av.*`` exception leaves this package.

Modules: ``info`` (limits, tolerances, result types), ``container`` (opening files, time origin),
``streams`` (stream choice, rates, rotation), ``decoder`` (bounded demux/decode, decoder threads),
``checks`` (argument and window checks), ``probe`` (probe, coverage, packet spans), ``audio`` (read_audio),
``video`` (read_frames, RGB conversion), ``keyframes`` (read_keyframes), ``clip`` (read_clip),
``tarshard`` (member paths, shard indexes, reading a member in place).
"""

from ccl_cache.media.audio import read_audio
from ccl_cache.media.clip import read_clip
from ccl_cache.media.decoder import set_decoder_threads
from ccl_cache.media.info import (
    AUDIO_PREROLL_S, DEFAULT_LIMITS, END_TOLERANCE_S, SEEK_GAP_S, AudioStreamInfo, DecodeLimits, Frames,
    MediaInfo, PacketScan, VideoStreamInfo,
)
from ccl_cache.media.keyframes import read_keyframes
from ccl_cache.media.probe import measure_coverage, probe, scan_packets
from ccl_cache.media.tarshard import (
    TarIndex, TarMember, is_member_path, is_tar_name, member_exists, member_path, read_member, split_member_path,
    tar_index,
)
from ccl_cache.media.video import read_frames

__all__ = [
    "AUDIO_PREROLL_S", "DEFAULT_LIMITS", "END_TOLERANCE_S", "SEEK_GAP_S",
    "AudioStreamInfo", "DecodeLimits", "Frames", "MediaInfo", "PacketScan", "TarIndex", "TarMember", "VideoStreamInfo",
    "is_member_path", "is_tar_name", "measure_coverage", "member_exists", "member_path", "probe", "read_audio", "read_clip",
    "read_frames", "read_keyframes", "read_member", "scan_packets", "set_decoder_threads", "split_member_path", "tar_index",
]
