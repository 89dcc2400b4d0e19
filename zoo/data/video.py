"""Video frames as a gallery: decode with PyAV, keep every N-th frame with its number and time."""
from __future__ import annotations

from pathlib import Path

from zoo.data.images import Record
from zoo.errors import ZooError


def video_records(path: str | Path, every: int = 1) -> list[Record]:
    """Decoded frames of a video as records (frame number, time in seconds, image)."""
    import av

    if every < 1:
        raise ZooError(f"--every {every}: must be 1 or more")
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"no such video: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise ZooError(f"cannot open video {path}: {e}") from e
    records = []
    with container:
        stream = container.streams.video[0]
        for n, frame in enumerate(container.decode(stream)):
            if n % every:
                continue
            t = float(frame.time) if frame.time is not None else n / float(stream.average_rate or 1)
            records.append(Record(str(path.resolve()), None, frame=n, time=round(t, 4), image=frame.to_image()))
    if not records:
        raise ZooError(f"no frames decoded from {path}")
    return records


def read_frame(path: str | Path, frame_number: int):
    """One frame as a PIL image (for pictures of search results)."""
    import av

    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n == frame_number:
                return frame.to_image().convert("RGB")
    raise ZooError(f"{path} has no frame {frame_number}")
