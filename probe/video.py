"""Video input: frames at 1 fps from a video file (PyAV) or a folder of already-sampled frames.

LLaVA-Mini compresses each frame on its own; the paper samples frames at 1 fps from the middle of
uniform segments. Lives in probe (not llava_mini) so that input validation can check videos up front.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from probe.errors import ProbeError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def is_video_source(source: str | Path) -> bool:
    """A video file, or a folder holding frame images (a folder without any is no video, just a folder)."""
    path = Path(str(source))
    if path.is_dir():
        return _holds_frames(path)
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _holds_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in FRAME_EXTENSIONS for p in folder.iterdir())


def video_given_to_still_model(source: str | Path) -> ProbeError:
    """The one message for a video where a model takes still images only."""
    what = "a folder of video frames" if Path(str(source)).is_dir() else "a video file"
    return ProbeError(f"{source} is {what}; this model takes still images (LLaVA-Mini models take video)")


def load_video_frames(
    source: str | Path, fps: float = 1.0, max_frames: int | None = None
) -> list[Image.Image]:
    """Frames at `fps` (default 1 per second: the middle frame of T = round(duration * fps) uniform segments).

    A folder is read as already-sampled frames (sorted file names); `max_frames` subsamples uniformly.
    """
    path = Path(str(source))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
        if not files:
            raise ProbeError(f"video folder {path} holds no frames ({', '.join(sorted(FRAME_EXTENSIONS))})")
        frames = [Image.open(p).convert("RGB") for p in files]
    else:
        if not path.is_file():
            raise ProbeError(f"video not found: {path}")
        frames = _decode_video(path, fps)
    if max_frames is not None and len(frames) > max_frames:
        frames = [frames[int((k + 0.5) * len(frames) / max_frames)] for k in range(max_frames)]
    return frames


def _decode_video(path: Path, fps: float) -> list[Image.Image]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded = [
                (float(frame.time or 0.0), frame.to_image().convert("RGB"))
                for frame in container.decode(stream)
            ]
    except (av.error.FFmpegError, IndexError) as exc:
        raise ProbeError(f"cannot read video {path}: {exc.__class__.__name__}") from None
    if not decoded:
        raise ProbeError(f"video {path} has no frames")
    times = [t for t, _ in decoded]
    step = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else 1.0
    duration = times[-1] - times[0] + step
    count = max(1, round(duration * fps))
    chosen = []
    for k in range(count):
        target = times[0] + (k + 0.5) * duration / count
        chosen.append(min(range(len(times)), key=lambda i, target=target: abs(times[i] - target)))
    return [decoded[i][1] for i in chosen]


def verify_video(source: str | Path) -> None:
    """Cheap up-front check: a folder holds at least one frame file, a video file has a video stream."""
    path = Path(str(source))
    if path.is_dir():
        if not _holds_frames(path):
            raise ProbeError(f"video folder {path} holds no frames ({', '.join(sorted(FRAME_EXTENSIONS))})")
        return
    if not path.is_file():
        raise ProbeError(f"video not found: {path}")
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError(f"cannot read video {path}: no video stream")
    except av.error.FFmpegError as exc:
        raise ProbeError(f"cannot read video {path}: {exc.__class__.__name__}") from None
