"""The one way bnorder writes a length of time, for people: the sweep's estimate, the live
display and the report all say durations alike."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``3725`` → ``1 h 2 min``: a time as people say it, to the precision that matters."""
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
