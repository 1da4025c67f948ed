"""Test-time augmentation: the views of a batch (flips, the dihedral group) and the logits averaged over them, under
`model.tta` (false, flip or true, dihedral)."""

from __future__ import annotations

import torch


def tta_mode(tta: bool | str | None, key: str = "model.tta") -> str | None:
    """`model.tta` as a mode: false/None -> None (one view), true -> "flip" (checkpoints before dihedral existed).
    key: the config key the value came from, for the error."""
    if tta is None or tta is False:
        return None
    if tta is True:
        return "flip"
    if tta not in TTA_VIEWS:
        raise ValueError(f"{key}={tta!r} is not a test-time augmentation: use false, flip (or true) or dihedral")
    return tta


def flip_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The identity, horizontal, vertical and both flips of a batch (the rotations by 0 and 180 degrees and the two
    mirrors)."""
    return [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square: flip TTA's 4 views, then the same 4 of the transposed image (rotations by 90
    and 270 degrees and the two diagonal mirrors). A lesion has no up, and the network pools globally, so a 4:3 input
    transposed to 3:4 is a valid view."""
    return flip_views(x) + flip_views(x.transpose(-2, -1))


# The modes of model.tta, fewest views first; each mode's views begin with those of the modes before it.
TTA_VIEWS = {"flip": flip_views, "dihedral": dihedral_views}


def tta_logits(net: torch.nn.Module, x: torch.Tensor, tta: bool | str | None) -> torch.Tensor:
    """The network's logits under the test-time augmentation `tta` (false, flip/true, dihedral): averaged over its
    views."""
    mode = tta_mode(tta)
    return net(x) if mode is None else torch.stack([net(v) for v in TTA_VIEWS[mode](x)]).mean(0)
