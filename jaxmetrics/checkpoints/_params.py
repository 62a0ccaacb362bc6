"""Assembling a Flax parameter tree from checkpoint tensors, strictly."""

from flax import traverse_util

from jaxmetrics._errors import CheckpointError


def assemble(flat, shapes, unknown, source, what, name=".".join):
  """Returns the nested tree of ``flat`` (path → array) if it fills ``shapes`` exactly.

  Args:
    flat: converted arrays by parameter path, shapes already checked.
    shapes: every parameter path the model needs → its shape.
    unknown: checkpoint tensor names that map to no parameter.
    source: the file, for messages.
    what: what the checkpoint should have been, e.g. "an FID Inception-v3 state dict".
    name: renders a missing path in the checkpoint's own naming.

  Raises:
    CheckpointError: one line counting the missing and unexpected tensors, with examples.
  """
  missing = [name(p) for p in shapes if p not in flat]
  if missing or unknown:
    detail = []
    if missing:
      detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unknown:
      detail.append(f"{len(unknown)} unexpected (e.g. {', '.join(sorted(unknown)[:3])})")
    raise CheckpointError(f"{source}: not {what}: {'; '.join(detail)} tensors")
  return traverse_util.unflatten_dict(flat)
