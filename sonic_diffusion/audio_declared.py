"""The length a container *declares* in its header, where it declares one.

Used to refuse truncated files: a WAV whose header says 25 s but which holds 1 s,
an MP3 cut short whose Xing/Info header counts 25 s of frames. Only lengths written
by the encoder are trusted; lengths FFmpeg estimates (from the bit rate, or from the
last Ogg page) would make a valid file look truncated or could never reveal a cut.
"""
import os
import struct

# FFmpeg clamps a WAV's data size to the file size, so the header is read here.
_WAV_MAGIC = b"RIFF"
_MAX_CHUNKS = 64


def wav_declared_seconds(path):
    """Seconds the RIFF/WAVE header declares (data size / byte rate), or None when it
    declares none (streamed WAVs write 0 or 0xFFFFFFFF) or the header is unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != _WAV_MAGIC or head[8:12] != b"WAVE":
                return None
            byte_rate = None
            for _ in range(_MAX_CHUNKS):
                hdr = f.read(8)
                if len(hdr) < 8:
                    return None
                cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(min(size, 16))
                    if len(fmt) < 12:
                        return None
                    byte_rate = struct.unpack("<I", fmt[8:12])[0]
                    f.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
                elif cid == b"data":
                    if not byte_rate or size in (0, 0xFFFFFFFF):
                        return None
                    return size / byte_rate
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


def _mp3_has_frame_count(path):
    """True when the first MPEG frame carries a Xing/Info or VBRI header (frame count
    written by the encoder); without one FFmpeg estimates the length from the bit rate."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
            skip = 0
            if head[:3] == b"ID3" and len(head) == 10:  # ID3v2: 4 syncsafe size bytes
                size = head[6:10]
                skip = 10 + ((size[0] << 21) | (size[1] << 14) | (size[2] << 7) | size[3])
            f.seek(skip)
            first = f.read(4096)
    except OSError:
        return False
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


def declared_seconds(path, container, stream):
    """Header-declared length in seconds of ``stream``, or None when the format does
    not declare one that can be trusted (see the module docstring)."""
    kinds = set(container.format.name.split(","))
    if "wav" in kinds:
        return wav_declared_seconds(path)
    stream_s = None
    if stream.duration and stream.time_base:
        stream_s = float(stream.duration * stream.time_base)
    if "flac" in kinds or "mov" in kinds or "mp4" in kinds:
        return stream_s or None  # FLAC STREAMINFO sample count; MP4 sample tables
    if "mp3" in kinds:
        return stream_s if stream_s and _mp3_has_frame_count(path) else None
    if "matroska" in kinds or "webm" in kinds:
        # The Segment's Duration element; live recordings omit it (then None).
        return stream_s or (container.duration / 1e6 if container.duration else None)
    return None
