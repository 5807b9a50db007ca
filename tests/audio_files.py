"""Writes test audio in any container PyAV can encode, frame by frame (encoders with a
fixed frame size, such as AAC, Vorbis and Opus, refuse one big frame)."""
import av
import numpy as np

# (extension, codec, container format) for every container the seeking test covers.
CONTAINERS = {
    "wav": ("pcm_s16le", None), "flac": ("flac", None), "mp3": ("libmp3lame", None),
    "ogg": ("vorbis", "ogg"), "opus": ("libopus", "ogg"), "webm": ("libopus", "webm"), "m4a": ("aac", "mp4"),
}


def _frame(chunk, fmt, layout, rate, pts):
    planar = fmt.endswith("p")
    arr = np.ascontiguousarray(chunk if planar else chunk.T.reshape(1, -1))
    if fmt.startswith("s16"):
        arr = (np.clip(arr, -1, 1) * 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        arr = (np.clip(arr, -1, 1) * 2147483647).astype(np.int32)
    else:
        arr = arr.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
    frame.sample_rate = rate
    frame.pts = pts
    return frame


def write_audio(path, samples, rate, ext=None):
    """samples [C, T] float in -1..1 -> ``path`` encoded as its extension says."""
    ext = ext or str(path).rsplit(".", 1)[-1]
    codec, fmt = CONTAINERS[ext]
    layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "-2"}  # FFmpeg's native Vorbis encoder is "experimental"
        cc = stream.codec_context
        sample_fmt = cc.format.name if cc.format else "flt"
        step = cc.frame_size or 4096
        for s in range(0, samples.shape[1], step):
            for packet in stream.encode(_frame(samples[:, s:s + step], sample_fmt, layout, rate, s)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def sweep(rate, seconds):
    """Stereo test signal without noise (AAC's noise substitution would make two
    decodes of noise differ): a chirp plus tones, different on each channel."""
    t = np.arange(int(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * (200 * t + 40 * t ** 2)) + 0.2 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 660 * t) * np.cos(2 * np.pi * 0.5 * t)
    return np.stack([left, right])


def silent_flac(path, rate, channels, seconds):
    """Silence in FLAC (a few hundred bytes per second, whatever it decodes to)."""
    layout = {1: "mono", 2: "stereo", 8: "7.1"}[channels]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout=layout)
        step = stream.codec_context.frame_size or 4096
        silence = np.zeros((1, step * channels), dtype=np.int16)  # packed s16, the encoder's format
        for s in range(0, int(rate * seconds), step):
            frame = av.AudioFrame.from_ndarray(silence, format="s16", layout=layout)
            frame.sample_rate, frame.pts = rate, s
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def flac_declaring(path, samples):
    """Rewrites the STREAMINFO total-samples field (the low 36 bits of the 8 bytes at
    offset 18) so the header lies about the length; the frames are unchanged."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | samples
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def wav_header_only(path, rate, channels, declared_seconds, data_seconds):
    """A 16-bit PCM WAV written by hand (any rate and channel count): its header declares
    ``declared_seconds``, it holds ``data_seconds`` of silence."""
    import struct

    block = 2 * channels
    size = int(declared_seconds * rate) * block
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    body = bytes(int(data_seconds * rate) * block)
    head = b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    path.write_bytes(head + b"data" + struct.pack("<I", size) + body)
    return path
