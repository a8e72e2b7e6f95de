"""The site's per-tag overrides: the rules hospitals keep in CTP scripts and Cloud
Healthcare tag filters, as Annex E action letters by keyword or tag, applied before the
table at any depth. A kept value is still content-checked unless the override says
``trust_content: true`` (warned about when the config is read)."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset

from transforms.deid.config import Override
from transforms.deid.table import AnnexETable, element_vr, keyword
from transforms.deid.walk import WalkState


class SiteOverrides:
    """Step: applies ``DeidConfig.overrides`` (``tag → action``) before the table."""

    def __init__(self, overrides: tuple[Override, ...], table: AnnexETable):
        self.actions = {o.tag: o.action for o in overrides}
        self.trusted = frozenset(o.tag for o in overrides if o.trust_content)
        self.table = table
        # Set by the engine: the content check for what K keeps.
        self.check: Callable[[Dataset, int, str, WalkState], None] | None = None

    def __call__(self, ds: Dataset, t: int, state: WalkState) -> bool:
        action = self.actions.get(t)
        if action is None:
            return False
        state.counts[f"override:{keyword(t)}"] += 1
        if action == "K":
            vr = element_vr(ds, t)
            if vr == "SQ":
                state.items(ds, t)
            elif self.check is not None:
                self.check(ds, t, vr, state)
            return True
        self.table.apply(ds, t, action, state)
        return True
