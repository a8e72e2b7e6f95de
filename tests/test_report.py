"""pipelines/report.py: the redaction audit view shows de-identified pixels only."""

import numpy as np

from pipelines.report import outlined


def test_blanked_regions_are_outlined_on_the_redacted_frame_only():
    after = np.full((40, 60, 3), 90, np.uint8)
    blanked = np.zeros((40, 60), bool)
    blanked[5:12, 4:30] = True  # two regions
    blanked[25:33, 40:58] = True
    after[blanked] = 0
    out = outlined(after, blanked)
    red = (out == (255, 0, 0)).all(axis=-1)
    # Each region's border is drawn, inside the region: nothing outside it changes.
    assert red[5, 4:30].all() and red[11, 4:30].all() and red[25:33, 40].all()
    assert not red[~blanked].any() and (out[~blanked] == after[~blanked]).all()
    # Inside, only the blanked value or the outline: no other pixel can appear there.
    inside = out[blanked & ~red]
    assert (inside == 0).all() and red.sum() == 2 * (26 + 7) - 4 + 2 * (18 + 8) - 4
