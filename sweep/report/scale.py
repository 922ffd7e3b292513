"""The one colour scale of a report: every heatmap of it (the grid's, the contour's, the
parallel coordinates' lines) paints the same value in the same colour.

Each grid heatmap scaled to its own values painted 94.06% at learning rate 0.01 the yellow of
98.25% at learning rate 1 (#28), so a reader comparing two of them compared nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import matplotlib


class Scale(NamedTuple):
    """The span of a report's values, and viridis over it: the study's best end always its
    bright yellow (reversed for a study that minimises)."""

    low: float
    high: float
    maximize: bool = True

    @classmethod
    def of(cls, values: Sequence[float], *, maximize: bool = True) -> Scale:
        """The scale spanning ``values`` (finite; a single value gets a unit-wide span)."""
        low, high = (min(values), max(values)) if len(values) else (0.0, 1.0)
        if low == high:
            low, high = low - 0.5, high + 0.5
        return cls(float(low), float(high), maximize)

    @property
    def cmap(self) -> matplotlib.colors.Colormap:
        return matplotlib.colormaps["viridis" if self.maximize else "viridis_r"]

    @property
    def norm(self) -> matplotlib.colors.Normalize:
        return matplotlib.colors.Normalize(self.low, self.high)

    def kwargs(self) -> dict[str, object]:
        """What ``imshow``, ``scatter``, ``tricontourf`` take to paint in this scale."""
        return {"cmap": self.cmap, "vmin": self.low, "vmax": self.high}

    def text_colour(self, value: float) -> str:
        """Black on the bright end of the scale, white on its dark end."""
        r, g, b, _ = self.cmap(self.norm(value))
        return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
