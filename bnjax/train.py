"""Optimizer, schedule, and the per-member and per-arm train and eval steps.

A member's state is a `MemberState`; an arm's state stacks its fields along
a leading member axis M, and `make_arm_step` returns one jitted program that
advances all M members on a shared batch: `jit(vmap(member_step))` (or
`jit(lax.map(member_step))`), with the learning rate a per-member traced
value so that no rate triggers a recompilation.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnjax import data, forward, mesh as mesh_lib, models

Metrics = dict[str, jax.Array]
METRIC_NAMES = ("train_loss", "train_accuracy", "grad_norm", "param_norm")


@flax.struct.dataclass
class MemberState:
  """Everything a member needs to take its next step; a pytree (jit, vmap, Orbax take it whole).

  Shapes are one member's; an arm's state stacks every field along a leading
  member axis M (base_lr (M,), a kernel (M, ...)), see `num_members`.

  Attributes:
    params: the model's parameters.
    batch_stats: its BN running statistics ({} without BN).
    opt_state: optax state of SGD with momentum and weight decay (`make_optimizer`).
    base_lr: () float32, the member's base learning rate (a traced value).
    diverged: () bool, set once and never cleared.
    diverged_step: () int32, the step at which it diverged, -1 if never.

  Orbax names a field by its attribute, so a checkpoint holds it under the
  same leaf paths (states/params/..., states/diverged) as the plain dict of
  these fields that bnjax saved before, and either loads into the other.
  """

  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  base_lr: jax.Array
  diverged: jax.Array
  diverged_step: jax.Array


def num_members(states: MemberState) -> int:
  """M, the number of members stacked in an arm's state."""
  return states.base_lr.shape[0]


def make_optimizer(momentum: float, weight_decay: float) -> optax.GradientTransformation:
  """SGD with heavy-ball momentum and coupled (L2) weight decay, as in PyTorch.

  The learning rate is an injected hyperparameter, set every step by the
  train step from the member's base rate and the schedule.
  """
  def sgd(learning_rate: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum))
  return optax.inject_hyperparams(sgd)(learning_rate=0.0)


def lr_factor(step: int | jax.Array, train_config: Mapping[str, Any]) -> jax.Array:
  """The schedule's multiplier of the base rate at `step` (0-based update index).

  Piecewise constant: lr_decay**k from the k-th boundary on (fractions of
  num_steps, rounded down to a step), and warmup_factor during the first
  warmup_steps. `step` may be traced; the factor is float32.
  """
  return jnp.asarray(lr_schedule(train_config)(step), jnp.float32)


def lr_schedule(train_config: Mapping[str, Any]) -> optax.Schedule:
  """`lr_factor` as an optax schedule: a constant warmup joined to a piecewise constant decay.

  Fractions that round to the same step make one boundary whose scale is
  their product (piecewise_constant_schedule takes a dict). Scales are
  float32 products of lr_decay, the numbers `lr_decay ** k` gave inside the
  jitted step before (bit for bit up to k = 3, measured; beyond that XLA's
  pow rounds differently, and differently again outside jit).
  """
  warmup_steps = train_config["warmup_steps"]
  decay = np.float32(train_config["lr_decay"])
  scales: dict[int, np.float32] = {}
  for fraction in train_config["lr_boundaries"]:
    # join_schedules counts the second schedule's steps from warmup_steps.
    boundary = int(fraction * train_config["num_steps"]) - warmup_steps
    scales[boundary] = scales.get(boundary, np.float32(1)) * decay
  return optax.join_schedules(
      [optax.constant_schedule(train_config["warmup_factor"]),
       optax.piecewise_constant_schedule(1.0, scales)], [warmup_steps])


def init_member(model: nn.Module, tx: optax.GradientTransformation, seed: int | jax.Array,
                base_lr: float | jax.Array) -> MemberState:
  """A member's initial state; its variables are a pure function of `seed`."""
  return member_state(init_variables(model, seed), tx, base_lr)


def init_variables(model: nn.Module, seed: int | jax.Array) -> dict[str, Any]:
  """A member's variables at initialisation ({params, batch_stats}) from its seed.

  Every member, trained or only measured, starts here. Compiled once per
  model, whatever the number of members (JAX's persistent compilation cache
  then serves relaunches), and so called outside jit: for shapes inside a
  trace, `abstract_variables`. `seed` is cast to uint32, the range config
  validation admits.
  """
  return compiled_init(jax.default_backend())(model, jnp.asarray(seed, jnp.uint32))


def _variables_from_seed(model: nn.Module, seed: jax.Array) -> dict[str, Any]:
  variables = models.init_variables(model, jax.random.key(seed),
                                    jnp.zeros((1, *data.IMAGE_SHAPE)), train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# Init runs once per member, so its compile time is what counts: without
# LLVM's optimisations XLA:CPU compiles it several times faster (ResNet-8:
# 3.4 s -> 0.5 s; ResNet-110: 10.3 s -> 5.5 s with the run) into a program
# that gives the same variables bit for bit (integer random bits, then
# elementwise float transforms with nothing to contract or reassociate).
# Measured on the CPU backend only, so only there: elsewhere XLA's defaults.
UNOPTIMISED_INIT_BACKENDS = ("cpu",)


def init_compiler_options(backend: str) -> dict[str, Any] | None:
  """XLA options for compiling the init on `backend`: no backend optimisation on a CPU."""
  if backend in UNOPTIMISED_INIT_BACKENDS:
    return {"xla_backend_optimization_level": 0}
  return None


@functools.cache
def compiled_init(backend: str) -> Callable[[nn.Module, jax.Array], dict[str, Any]]:
  """jit(variables from a uint32 seed) with `backend`'s init compiler options, one per backend."""
  return jax.jit(_variables_from_seed, static_argnums=0,
                 compiler_options=init_compiler_options(backend))


def abstract_variables(model: nn.Module) -> dict[str, Any]:
  """Shapes and dtypes of `init_variables(model, seed)`, computing nothing."""
  return jax.eval_shape(functools.partial(_variables_from_seed, model),
                        jax.ShapeDtypeStruct((), jnp.uint32))


def member_state(variables: Mapping[str, Any], tx: optax.GradientTransformation,
                 base_lr: float | jax.Array) -> MemberState:
  """A fresh member state around given model variables ({params, batch_stats})."""
  params = variables["params"]
  return MemberState(
      params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
      base_lr=jnp.asarray(base_lr, jnp.float32), diverged=jnp.asarray(False),
      diverged_step=jnp.asarray(-1, jnp.int32))


def init_arm(model: nn.Module, tx: optax.GradientTransformation, seeds: tuple[int, ...],
             lrs_M: jax.Array) -> MemberState:
  """Stacked initial states of an arm's members, initialised one by one.

  One member at a time, so that the one compiled init serves every member
  count (a vmapped init compiles anew for each M). Bit for bit the states
  of a vmapped init; on a 2-core CPU, ResNet-8 arms of 4, 3 and 1 members
  took 12.5, 8.6 and 5.1 s vmapped op by op. Outside jit, like
  `init_variables`; for shapes, `abstract_arm`.
  """
  lrs_M = jnp.asarray(lrs_M, jnp.float32)
  members = [init_member(model, tx, seed, lrs_M[i]) for i, seed in enumerate(seeds)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def abstract_arm(model: nn.Module, tx: optax.GradientTransformation,
                 num_members: int) -> MemberState:
  """Shapes and dtypes of `init_arm` for `num_members` members, computing nothing."""
  def init(seed: jax.Array, base_lr: jax.Array) -> MemberState:
    return member_state(_variables_from_seed(model, seed), tx, base_lr)
  return jax.eval_shape(jax.vmap(init), jax.ShapeDtypeStruct((num_members,), jnp.uint32),
                        jax.ShapeDtypeStruct((num_members,), jnp.float32))


def model_variables(state: MemberState) -> dict[str, Any]:
  """A member state's {params, batch_stats}, what `model.apply` takes."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()


def flat_entries(tree: Any) -> jax.Array:
  """(N,): every entry of every leaf of `tree` (parameters or gradients), in one vector, in
  `jax.tree.leaves` order (that of `jax.flatten_util.ravel_pytree`).

  The train step checks and measures parameters and gradients on this vector, with one
  reduction each. XLA compiles a reduction per leaf as a loop of its own: with them, a
  ResNet-8 step had 30% more fusions and compiled 20% slower on XLA:CPU. The copy it
  costs is the size of the parameters, small beside a step's activations.
  """
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def train_forward(model: nn.Module, variables: Mapping[str, Any], images_BxHxWxC: jax.Array,
                  ghost_groups: int = 1) -> tuple[jax.Array, dict[str, Any], jax.Array]:
  """Train-mode (logits (B, K), updated collections, finite) of `forward.apply`.

  With `ghost_groups` G > 1 the batch is cut into G equal groups, each
  normalised by BN with its own statistics ("ghost" batch norm: what each of
  G data-parallel devices computes alone), and the new running statistics
  are the mean of the groups' (the same on every device).
  """
  apply = lambda x: forward.apply(model, variables, x, train=True, mutable=["batch_stats"])
  if ghost_groups == 1:
    return apply(images_BxHxWxC)
  groups = images_BxHxWxC.reshape(ghost_groups, -1, *images_BxHxWxC.shape[1:])
  logits_GxbxK, updates, finite_G = jax.vmap(apply)(groups)
  return (logits_GxbxK.reshape(-1, logits_GxbxK.shape[-1]),
          jax.tree.map(lambda u: u.mean(0), updates), finite_G.all())


def member_step(model: nn.Module, tx: optax.GradientTransformation,
                train_config: Mapping[str, Any], state: MemberState,
                images_BxHxWxC: jax.Array, labels_B: jax.Array,
                step: jax.Array, ghost_groups: int = 1) -> tuple[MemberState, Metrics]:
  """One SGD step of one member; a diverged member is returned unchanged.

  The member is marked diverged at `step` when any activation of its
  forward pass, its loss, its gradient or its new parameters is not finite,
  or its loss exceeds `max_loss`; from then on its state is frozen, so it
  can never spread NaNs or slow the others. The loss and accuracy of a
  step whose forward pass overflowed are reported as NaN, never as the
  number a masked overflow can produce (see `bnjax.forward`).
  """
  def loss_fn(params):
    logits, updates, finite = train_forward(
        model, {"params": params, "batch_stats": state.batch_stats}, images_BxHxWxC,
        ghost_groups)
    return cross_entropy(logits, labels_B), (logits, updates.get("batch_stats", {}), finite)

  (loss, (logits, batch_stats, finite)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads_N = flat_entries(grads)
  finite = finite & jnp.isfinite(loss) & jnp.isfinite(grads_N).all()
  lr = state.base_lr * lr_factor(step, train_config)
  opt_state = state.opt_state
  opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
  updates, opt_state = tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  healthy = (finite & (loss <= train_config["max_loss"])
             & jnp.isfinite(flat_entries(params)).all())
  diverges_now = ~state.diverged & ~healthy
  frozen = state.diverged | diverges_now
  stepped = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
  new_state = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state, stepped)
  new_state = new_state.replace(
      diverged=frozen,
      diverged_step=jnp.where(diverges_now, step.astype(jnp.int32), state.diverged_step))
  metrics = {
      "train_loss": jnp.where(finite, loss, jnp.nan),
      "train_accuracy": jnp.where(finite, jnp.mean(jnp.argmax(logits, -1) == labels_B), jnp.nan),
      "grad_norm": jnp.linalg.norm(grads_N),
      "param_norm": jnp.linalg.norm(flat_entries(new_state.params)),
  }
  return new_state, metrics


DATA_STREAMS = ("shared", "per_seed")


def make_arm_step(model: nn.Module, tx: optax.GradientTransformation,
                  train_config: Mapping[str, Any], augmentation: bool,
                  loop_members: int | None = None, mesh: jax.sharding.Mesh | None = None,
                  bn_statistics: str = "global"
                  ) -> Callable[[MemberState, Metrics, jax.Array, data.Dataset, jax.Array],
                                tuple[MemberState, Metrics]]:
  """The jitted step of a whole arm: (states, metric_sums, streams_M, dataset, step).

  With train_config["data_stream"] "shared" (the default) every member
  trains on batch `step` of one data stream; with "per_seed" each member on
  batch `step` of stream `streams_M[m]` (uint32 (M,), its seed: own order
  and augmentation per seed). The members are split over `mesh`'s member
  axis (default: one device), and each device steps its own: with
  `loop_members` None vmapped (every conv a grouped convolution); with
  k >= 1 one after another inside the same program (`lax.map`), k of them
  vmapped together per iteration, so that one dispatch advances them all
  without grouped convs for k = 1. No member needs another device's data,
  so the step has no collective, unless the mesh's `data` axis splits each
  member's batch: XLA then partitions the member's step over it (gradient
  and, with `bn_statistics` "global", BN statistics over the whole batch;
  "ghost": each device's part, see `train_forward`). Per-member metrics are added to
  `metric_sums` (each (M,)) on the device, so the host fetches them only
  when it logs. States and sums are donated; they and the streams must be
  laid out by `mesh_lib.place_members`, the dataset by `place_replicated`.
  """
  train_config = dict(train_config)
  mesh = mesh or mesh_lib.single_device_mesh()
  split = mesh_lib.data_devices(mesh)
  step_fn = functools.partial(member_step, model, tx, train_config,
                              ghost_groups=split if bn_statistics == "ghost" else 1)
  per_seed = train_config.get("data_stream", "shared") == "per_seed"
  over_data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh_lib.DATA))

  def batch(dataset: data.Dataset, step: jax.Array, stream: jax.Array | None):
    images, labels = data.train_batch(dataset, train_config["data_seed"], step,
                                      train_config["batch_size"], augmentation, stream)
    if split == 1:
      return images, labels
    return (jax.lax.with_sharding_constraint(images, over_data),
            jax.lax.with_sharding_constraint(labels, over_data))

  def device_members(states: MemberState, sums: Metrics, streams_M: jax.Array,
                     dataset: data.Dataset, step: jax.Array) -> tuple[MemberState, Metrics]:
    if per_seed:
      one = lambda args: step_fn(args[0], *batch(dataset, step, args[1]), step)
    else:
      images, labels = batch(dataset, step, None)
      one = lambda args: step_fn(args[0], images, labels, step)
    if loop_members is None:
      states, metrics = jax.vmap(one)((states, streams_M))
    else:
      states, metrics = jax.lax.map(one, (states, streams_M),
                                    batch_size=loop_members if loop_members > 1 else None)
    return states, jax.tree.map(jnp.add, sums, metrics)

  by_member, whole = jax.sharding.PartitionSpec(mesh_lib.MEMBERS), jax.sharding.PartitionSpec()
  return jax.jit(
      # Manual over members only: along `data` XLA partitions each member's step.
      jax.shard_map(device_members, mesh=mesh,
                    in_specs=(by_member, by_member, by_member, whole, whole),
                    out_specs=(by_member, by_member), axis_names={mesh_lib.MEMBERS}),
      donate_argnums=(0, 1))


def zero_metrics(num_members: int) -> Metrics:
  return {name: jnp.zeros((num_members,), jnp.float32) for name in METRIC_NAMES}


def make_arm_eval(model: nn.Module, batch_size: int, mesh: jax.sharding.Mesh | None = None
                  ) -> Callable[[MemberState, data.Dataset], Metrics]:
  """The jitted test evaluation of all members: {test_loss, test_accuracy} (M,).

  Uses the running BN statistics; loops over the test set inside the
  program, each device over its own members of `mesh` (as `make_arm_step`).
  """
  mesh = mesh or mesh_lib.single_device_mesh()

  def member_logits(state: MemberState, images: jax.Array) -> jax.Array:
    return model.apply(model_variables(state), images, train=False)

  by_member, whole = jax.sharding.PartitionSpec(mesh_lib.MEMBERS), jax.sharding.PartitionSpec()

  # check_vma=False: the loop's zero totals are the same on every device until
  # the first batch adds each device's own members to them.
  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(by_member, whole), out_specs=by_member,
                     check_vma=False)
  def arm_eval(states: MemberState, dataset: data.Dataset) -> Metrics:
    num_batches = -(-dataset.test.size // batch_size)

    def body(i, totals_Mx2):
      images, labels, mask_B = data.test_batch(dataset, i, batch_size)
      logits_MxBxK = jax.vmap(member_logits, in_axes=(0, None))(states, images)
      losses_MxB = optax.softmax_cross_entropy_with_integer_labels(
          logits_MxBxK, jnp.broadcast_to(labels, logits_MxBxK.shape[:2]))
      correct_MxB = jnp.argmax(logits_MxBxK, -1) == labels[None]
      return totals_Mx2 + jnp.stack([(losses_MxB * mask_B[None]).sum(-1),
                                     (correct_MxB * mask_B[None]).sum(-1)], -1)

    totals = jax.lax.fori_loop(0, num_batches, body, jnp.zeros((num_members(states), 2)))
    totals = totals / dataset.test.size
    return {"test_loss": totals[:, 0], "test_accuracy": totals[:, 1]}

  return arm_eval
