"""Orbax checkpoints of a sweep: saved while training, for resuming and for analysis.

    DIR/checkpoints/<step>/arms       per arm: stacked member states and the
                                      metric sums since the last log line
    DIR/checkpoints/<step>/progress   JSON: step, last_log_step, state_format,
                                      run_id (the run.json of the workdir it
                                      was saved in), checksums (`checksums`)

A checkpoint holds everything needed to continue exactly: member states
(params, BN statistics, optimizer state, base rate, diverged flag and step),
and the data-stream position, which is the step itself because batch t is a
pure function of (data seed, t).

Every restore verifies what it read: the checkpoint must belong to the run
in its workdir (same run id), and every array must match the CRC32
checksums saved with it, one per member (row of the leading axis) per
array. A mismatch is reported in one sentence naming the step, the array
and the member; nothing falls back silently.

In an analysis script or notebook:

    run = bnjax.checkpoint.load("runs/smoke")          # latest step
    member = run.member_index(norm="batch", lr=0.3, seed=0)
    model, variables = run.model(member), run.variables(member)
    logits = model.apply(variables, images)
"""

import dataclasses
import os
import zlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from bnjax import errors, logs, models, ownership, sweep, train, workdir as workdir_lib

CHECKPOINT_DIR = ownership.CHECKPOINT_DIR
# The layout of the saved arms tree (which leaves, their shapes); bump it when
# the member state changes shape, so that an old checkpoint is reported as
# such. Checkpoints from before it existed have no "state_format".
STATE_FORMAT = 1


def _directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def kept_steps(config: ml_collections.ConfigDict) -> list[int]:
  """Steps never deleted: the first, the last, and `checkpoint.keep_steps`."""
  return sorted({0, config.train.num_steps, *config.checkpoint.keep_steps})


def make_manager(workdir: str, config: ml_collections.ConfigDict,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The run's CheckpointManager: asynchronous saves, the latest `keep` kept.

  It saves (`manager.should_save`) every `checkpoint.every` steps and at
  the kept steps, and keeps the latest `keep` of those and the kept steps.
  Its items' handlers are named so that `item_metadata` can read a saved
  tree's layout before restoring it (see `restore`). Orbax's chatter about
  it stays out of the log (`logs.setup`), in scripts too.
  """
  logs.setup()
  saving = checkpoint_managers.AnySavePolicy([
      checkpoint_managers.FixedIntervalPolicy(config.checkpoint.every),
      checkpoint_managers.SpecificStepsPolicy(kept_steps(config)),
  ])
  keeping = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(config.checkpoint.keep),
      checkpoint_managers.CustomSteps(kept_steps(config)),
  ])
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=saving, preservation_policy=keeping,
      enable_async_checkpointing=True, read_only=read_only, create=not read_only)
  handlers = {"arms": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(_directory(workdir), options=options, item_handlers=handlers)


def _workdir(manager: ocp.CheckpointManager) -> str:
  return os.path.dirname(str(manager.directory))


def save(manager: ocp.CheckpointManager, step: int, arms: list[dict[str, Any]],
         progress: dict[str, int], force: bool = False) -> bool:
  """Starts an asynchronous save of `arms` (a pytree) and `progress` at `step`.

  Saves only at a step the manager's policy picks (see `make_manager`),
  or at any with `force`; returns whether it saved. `progress` is saved
  with this bnjax's STATE_FORMAT, the run id of the workdir and the arrays'
  checksums added. `arms` should be host arrays (the loop's snapshot);
  arrays spread over several processes must be replicated.
  """
  if not manager.should_save(step) and not force:
    return False
  progress = {**progress, "state_format": STATE_FORMAT, "checksums": checksums(arms)}
  run = ownership.run_id(_workdir(manager))
  if run is not None:
    progress["run_id"] = run
  return manager.save(step, args=ocp.args.Composite(
      arms=ocp.args.StandardSave(arms), progress=ocp.args.JsonSave(progress)), force=force)


def checksums(tree: Any) -> dict[str, list[int]]:
  """CRC32 of every array of `tree` per row of its leading (member) axis: {leaf path: [crc]}."""
  return {path: _row_checksums(leaf) for path, leaf in _named_leaves(tree)}


def _row_checksums(leaf: Any) -> list[int]:
  x = np.ascontiguousarray(_on_host(leaf))
  return [zlib.crc32(x)] if x.ndim == 0 else [zlib.crc32(row) for row in x]


def _on_host(leaf: Any) -> np.ndarray:
  """A whole array on the host; an array over several processes must be replicated."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if not leaf.sharding.is_fully_replicated:
      raise ValueError("checkpoint checksums need arrays replicated over the processes.")
    return np.asarray(leaf.addressable_data(0))
  return np.asarray(leaf)


def restore(manager: ocp.CheckpointManager, step: int, like_arms: list[dict[str, Any]],
            sharding: jax.sharding.Sharding | None = None
            ) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Restores (arms, progress) at `step` with every array laid out by `sharding`, verified.

  By default onto this process's first device: in a multi-process run each
  process then holds a whole copy of its own (every process must call this,
  as every one must make the manager). A sweep resuming on a mesh passes its
  replicated sharding, which spans every process's devices, and then lays the
  members out itself, so the run may have been saved on any number of
  devices and processes. `like_arms` gives the structure, shapes and dtypes
  (arrays or ShapeDtypeStructs). A checkpoint whose saved tree has other
  leaves or shapes (written by a bnjax with another member state) is
  reported as such, not as damaged; one of another run, or whose arrays do
  not match their checksums, is refused.
  """
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          like_arms)
  path = os.path.join(str(manager.directory), str(step))
  try:
    progress = dict(manager.restore(step, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))["progress"])
    _check_run(manager, progress, path)
    _check_layout(manager, step, like_arms, path, progress)
    arms = manager.restore(step, args=ocp.args.Composite(
        arms=ocp.args.StandardRestore(abstract)))["arms"]
  except errors.WorkdirError:
    raise
  except Exception as e:  # Orbax raises many types for damaged files
    raise errors.WorkdirError(
        f"The checkpoint {path} cannot be read ({type(e).__name__}); delete that"
        " directory to fall back to the previous checkpoint, or use a new --workdir.") from None
  _verify(manager, step, arms, progress.pop("checksums", None), path)
  return arms, progress


def _check_run(manager: ocp.CheckpointManager, progress: dict[str, Any], path: str) -> None:
  """Raises WorkdirError if the checkpoint records a run other than its workdir's."""
  saved, own = progress.get("run_id"), ownership.run_id(_workdir(manager))
  if saved is not None and own is not None and saved != own:
    raise errors.WorkdirError(
        f"The checkpoint {path} belongs to another run (run id {saved}, this workdir's is {own}),"
        " so it was copied or left here from elsewhere; move it out of checkpoints/, or use a"
        " new --workdir.")


def _verify(manager: ocp.CheckpointManager, step: int, arms: Any,
            saved: dict[str, list[int]] | None, path: str) -> None:
  """Raises WorkdirError naming the first array whose checksum differs from the saved one."""
  if saved is None:
    logging.warning("The checkpoint %s has no checksums (saved by an older bnjax), so it is not"
                    " verified.", path)
    return
  wrong = [(p, m) for p, crcs in checksums(arms).items()
           for m, (a, b) in enumerate(zip(crcs, saved.get(p, crcs))) if a != b]
  if not wrong:
    return
  (leaf, member), more = wrong[0], len({p for p, _ in wrong}) - 1
  arm, _, array = leaf.partition("/")  # the payload is a list of arms
  earlier = [s for s in manager.all_steps() if s < step]
  fallback = (f"to fall back to the previous checkpoint (step {max(earlier)})" if earlier
              else "and start the run anew")
  raise errors.WorkdirError(
      f"The checkpoint {path} is damaged: the array {array} of arm {arm}'s member {member}"
      f" (step {step}) does not match the checksum saved with it"
      + (f", nor do {more} other arrays" if more else "")
      + f"; delete that directory {fallback}, or use a new --workdir.")


def _check_layout(manager: ocp.CheckpointManager, step: int, like_arms: list[dict[str, Any]],
                  path: str, progress: dict[str, Any]) -> None:
  """Raises WorkdirError if the saved arms tree has other leaves or shapes than `like_arms`.

  Reads only metadata; if that cannot be read, the exception reaches
  `restore`, which reports a damaged checkpoint.
  """
  saved = manager.item_metadata(step)["arms"]
  if saved is None:
    return
  differences = _layout_differences(_layout(getattr(saved, "tree", saved)), _layout(like_arms))
  if not differences:
    return
  written = progress.get("state_format", "unrecorded, older than 1")
  shown = ", ".join(differences[:3]) + (f" and {len(differences) - 3} more"
                                        if len(differences) > 3 else "")
  raise errors.WorkdirError(
      f"The checkpoint {path} was written with a different state layout (state format"
      f" {written}, this bnjax's is {STATE_FORMAT}; {shown}), so it is not damaged: read it with"
      " the bnjax version that wrote it, or use a new --workdir.")


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """(leaf path "0/states/params/stem/conv/kernel", leaf) for arrays or Orbax metadata.

  Dict keys, sequence indices and attribute names (MemberState's fields)
  are named alike, so a tree of state dicts and one of MemberStates agree.
  """
  def name(key: Any) -> str:
    for field in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey (namedtuples)
      if hasattr(key, field):
        return str(getattr(key, field))
    return str(key)
  return [("/".join(name(k) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _layout(tree: Any) -> dict[str, tuple[int, ...]]:
  """Leaf path -> shape, for arrays or Orbax metadata."""
  return {path: tuple(getattr(leaf, "shape", ())) for path, leaf in _named_leaves(tree)}


def _layout_differences(saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
                        ) -> list[str]:
  """Human-readable differences between two layouts: leaves missing, extra, or reshaped."""
  missing = [f"{p} not saved" for p in expected if p not in saved]
  extra = [f"{p} saved but not expected" for p in saved if p not in expected]
  reshaped = [f"{p} saved as {saved[p]}, expected {expected[p]}"
              for p in expected if p in saved and saved[p] != expected[p]]
  return missing + extra + reshaped


# ---------------------------------------------------------------- analysis


@dataclasses.dataclass
class Run:
  """A sweep restored at one step, ready for analysis.

  Attributes:
    config: the run's resolved config.
    members: members.json records (member, lr, seed, arm fields, status, ...).
    step: the restored step (number of completed updates).
    arms: the sweep's arms; `states[a]` stacks the members of `arms[a]`.
    states: per arm, the stacked `train.MemberState` of its members
      (every field with a leading member axis M).
  """

  config: ml_collections.ConfigDict
  members: list[dict[str, Any]]
  step: int
  arms: list[sweep.Arm]
  states: list[train.MemberState]

  def _locate(self, member: int) -> tuple[int, int]:
    for a, arm in enumerate(self.arms):
      for position, m in enumerate(arm.members):
        if m.index == member:
          return a, position
    raise KeyError(f"No member {member}; this run has members 0..{len(self.members) - 1}.")

  def member_index(self, **fields: Any) -> int:
    """The index of the one member whose record matches `fields` (e.g. norm, lr, seed)."""
    matches = [m["member"] for m in self.members
               if all(m.get(k) == v for k, v in fields.items())]
    if len(matches) != 1:
      raise KeyError(f"{len(matches)} members match {fields}; name fields that pick exactly one.")
    return matches[0]

  def member_state(self, member: int) -> train.MemberState:
    """One member's full state, without the member axis."""
    a, position = self._locate(member)
    return sweep.select(self.states[a], position)

  def variables(self, member: int) -> dict[str, Any]:
    """One member's {params, batch_stats} for `model(member).apply`, one entry per block."""
    return train.model_variables(self.unrolled(member)[1])

  def model(self, member: int) -> nn.Module:
    """The Flax model of the member's arm, with one module per block (see `unrolled`)."""
    return self.unrolled(member)[0]

  def unrolled(self, member: int) -> tuple[nn.Module, train.MemberState]:
    """The member's model with one module per block, and its state with variables to match.

    A model trained with scanned blocks is stored with stacked variables;
    they come back split per block (`models.unrolled`), so that layer names
    (stage2_block05/conv_norm1/...) are the same whichever way it trained.
    """
    a, position = self._locate(member)
    state = sweep.select(self.states[a], position)
    model, variables = models.unrolled(sweep.build_model(self.arms[a], self.config),
                                       train.model_variables(state))
    return model, state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def available_steps(workdir: str) -> list[int]:
  """Steps with a complete checkpoint in `workdir`, oldest first."""
  if not os.path.isdir(_directory(workdir)):
    return []
  config = read_config(workdir)
  with make_manager(workdir, config, read_only=True) as manager:
    return sorted(manager.all_steps())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config saved with a run."""
  return ml_collections.ConfigDict(workdir_lib.read_config_json(workdir))


def abstract_arms(arms: list[sweep.Arm], config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Shapes and dtypes of every arm's checkpointed payload, computing nothing."""
  tx = train.make_optimizer(config.train.momentum, config.train.weight_decay)
  def payload(arm: sweep.Arm) -> dict[str, Any]:
    num_members = len(arm.members)
    return {"states": train.abstract_arm(sweep.build_model(arm, config), tx, num_members),
            "sums": jax.eval_shape(lambda: train.zero_metrics(num_members))}
  return [payload(arm) for arm in arms]


def load(workdir: str, step: int | None = None) -> Run:
  """Restores a sweep at `step` (default: the latest) onto this process's first device.

  In a multi-process run every process must call it, and each gets all of it.
  """
  config = read_config(workdir)
  steps = available_steps(workdir)
  if not steps:
    raise errors.WorkdirError(f"{workdir} has no complete checkpoint; train it first.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise errors.WorkdirError(f"{workdir} has no checkpoint at step {step}; it has {steps}.")
  arms = sweep.make_arms(config)
  with make_manager(workdir, config, read_only=True) as manager:
    payload, _ = restore(manager, step, abstract_arms(arms, config))
  return Run(config=config, members=workdir_lib.read_members(workdir), step=step,
             arms=arms, states=[p["states"] for p in payload])
