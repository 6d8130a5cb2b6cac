"""Decoding the frames of a video file with PyAV: exactly the frames a full decode gives, decoding as little
as that allows.

Frame i of a video is the frame with the i-th smallest timestamp, as a decode of every frame returns them.
`decode_video` first reads the packets without decoding them (the packet index: every frame's timestamp,
hence the frame count, also where the container states none, and which packet holds each wanted frame).
It then decodes runs of packets: a run starts at the last keyframe before a wanted frame when that skips
packets (never backwards), ends at the last wanted frame's packet, and the decoder skips the frames that no
other frame references unless they are wanted; only the wanted frames are converted to RGB. Where the plan
cannot be trusted (no timestamps, repeated ones) or a wanted frame never comes out of the decoder (a
damaged file), the video is decoded from the start as `decode_sequential` does, the fallback.

One decoder thread: DataLoader workers decode videos in parallel, and decoder threads measured 12-23% more
CPU time per clip.
"""
import bisect

import numpy as np


def decode_video(path, choose_indices=None, short_side=None):
    """Frames of the first video stream of `path` as uint8 (N, H, W, 3) RGB: all of them, or those at
    `choose_indices(frame_count)` (an int array in any order, repeats allowed), exactly as a full decode
    gives them. The frame count comes from the packets; for a damaged file whose packets hold fewer
    decodable frames than that, the frames are chosen again from the count a sequential decode finds.
    `short_side`: the frames are resized (area averaging) to that shorter side as they are converted to RGB.
    Raises ValueError for a file without decodable video frames and PyAV's errors for one that is not a
    video."""
    import av
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            packets = _packet_index(container, stream)
            if packets is None:
                raise _Fallback
            frame_pts = sorted(packet.pts for packet in packets)
            wanted = chosen_indices(choose_indices, len(frame_pts))
            wanted_pts = {frame_pts[i] for i in wanted}
            got = _decode_runs(stream, packets, _runs(packets, wanted_pts), wanted_pts, _to_rgb(short_side))
            if len(got) < len(wanted_pts):   # a wanted frame never came out of the decoder
                raise _Fallback
            return np.stack([got[frame_pts[i]] for i in wanted])
    except (_Fallback, av.error.FFmpegError):   # decoding from the start decides (and raises if it must)
        return decode_sequential(path, choose_indices, short_side)


def decode_sequential(path, choose_indices=None, short_side=None):
    """The frames `decode_video` returns, by decoding every frame from the start (up to the last one wanted
    when the container states its frame count): the fallback of `decode_video`, and the reference it is
    tested against."""
    import av
    with av.open(path) as container:
        stream = _video_stream(container, path)
        wanted = chosen_indices(choose_indices, stream.frames) if stream.frames > 0 else None
        decoded = []
        for frame in container.decode(stream):
            decoded.append(frame)
            if wanted is not None and len(decoded) > wanted.max():
                break
    if not decoded:
        raise ValueError(f"{path}: no decodable video frames")
    if wanted is None or wanted.max() >= len(decoded):   # no stated count, or a wrong one
        wanted = chosen_indices(choose_indices, len(decoded))
    to_rgb = _to_rgb(short_side)
    return np.stack([to_rgb(decoded[i]) for i in wanted])


def count_frames(path):
    """The number of frames `decode_video` counts in `path` (from its packets, without decoding)."""
    import av
    with av.open(path) as container:
        stream = _video_stream(container, path)
        packets = _packet_index(container, stream)
        return len(packets) if packets is not None else len(decode_sequential(path))


class _Fallback(Exception):
    """The planned decode cannot give the exact frames: decode sequentially."""


def _video_stream(container, path):
    if not container.streams.video:
        raise ValueError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_count = 1
    return stream


def chosen_indices(choose_indices, count):
    """`choose_indices(count)` as an int64 array checked to lie in [0, count) (every index if it is None)."""
    if count < 1:
        raise ValueError("no decodable video frames")
    if choose_indices is None:
        return np.arange(count)
    wanted = np.asarray(choose_indices(count), dtype=np.int64).reshape(-1)
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= count):
        raise ValueError(f"choose_indices({count}) gave indices outside [0, {count})")
    return wanted


def _packet_index(container, stream):
    """The stream's packets that hold a frame, in decode order; None where their timestamps cannot order
    the frames (a packet without one, or two with the same)."""
    packets = [packet for packet in container.demux(stream) if packet.size and not packet.is_discard]
    if not packets or any(packet.pts is None for packet in packets):
        return None
    if len({packet.pts for packet in packets}) < len(packets):
        return None
    return packets


def _runs(packets, wanted_pts):
    """[start, stop) ranges of packet positions to decode, in decode order, that produce every wanted frame.

    A wanted frame needs the packets from the last keyframe at or before it, in decode order and in time
    (a keyframe later in time does not restore the frames before it), up to its own packet. A new run
    starts only where that keyframe lies past the end of the previous run: decoding never goes back."""
    position = {packet.pts: i for i, packet in enumerate(packets)}
    keyframes = [i for i, packet in enumerate(packets) if packet.is_keyframe]
    runs = []
    for target in sorted(position[pts] for pts in wanted_pts):
        if runs and target < runs[-1][1]:
            continue
        start = 0
        for k in reversed(keyframes[:bisect.bisect_right(keyframes, target)]):
            if packets[k].pts <= packets[target].pts:
                start = k
                break
        if runs and start <= runs[-1][1]:
            runs[-1][1] = target + 1
        else:
            runs.append([start, target + 1])
    return runs


def _to_rgb(short_side):
    """frame -> uint8 (H, W, 3) RGB array, resized to `short_side` if given; one reformatter for every
    frame (it keeps its conversion context)."""
    from av.video.reformatter import VideoReformatter

    from .transforms import scaled_size
    reformatter = VideoReformatter()

    def convert(frame):
        if short_side is None:
            return reformatter.reformat(frame, format="rgb24").to_ndarray()
        height, width = scaled_size(frame.height, frame.width, short_side)
        return reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                    interpolation="AREA").to_ndarray()
    return convert


def _decode_runs(stream, packets, runs, wanted_pts, to_rgb):
    """{pts: RGB array} of the wanted frames that decoding `runs` of `packets` gives."""
    codec = stream.codec_context
    got = {}

    def keep(frames):
        for frame in frames:
            if frame.pts in wanted_pts and frame.pts not in got:
                got[frame.pts] = to_rgb(frame)

    for start, stop in runs:
        for packet in packets[start:stop]:
            # frames no other frame references are skipped unless wanted (per packet, single-threaded)
            codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
            keep(codec.decode(packet))
        codec.skip_frame = "DEFAULT"
        keep(codec.decode(None))   # drain the frames still held for reordering
        codec.flush_buffers()
    return got
