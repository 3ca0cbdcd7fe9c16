"""The paper's ablation variants (§4.4, Table 2) as switches on one trainer.

Base: no prompts (a padding point only, as upstream without a box), plain Dice + cross-entropy
over the whole crop. Each next variant adds one thing: the text prompt (T), the dose-guided box
(B), simulated clicks during training (C), the small-target focus loss inside r (L). The full
model is Base-T-B-C-L. A variant without text or box is a network without that branch, so its
checkpoint and its inference path carry no unused parameters or prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import ModelConfig
from models.errors import ModelError


@dataclass(frozen=True)
class Variant:
    name: str
    text: bool
    box: bool
    clicks: bool
    focus_loss: bool

    def network_config(self, base: ModelConfig) -> ModelConfig:
        """``base`` with the text and box branches this variant uses (and no others)."""
        return base.with_changes(
            name=base.name if self.text and self.box else f"{base.name}-{self.name}",
            text_dim=base.text_dim if self.text else None,
            box_prompt=self.box,
        )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("base", text=False, box=False, clicks=False, focus_loss=False),
        Variant("base-t", text=True, box=False, clicks=False, focus_loss=False),
        Variant("base-t-b", text=True, box=True, clicks=False, focus_loss=False),
        Variant("base-t-b-c", text=True, box=True, clicks=True, focus_loss=False),
        Variant("base-t-b-c-l", text=True, box=True, clicks=True, focus_loss=True),
    )
}
FULL_MODEL = "base-t-b-c-l"


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name.lower()]
    except KeyError:
        raise ModelError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
