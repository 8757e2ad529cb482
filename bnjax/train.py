"""Optimizer, schedule, and the per-member and per-arm train and eval steps.

A member's state is a plain dict:

  params, batch_stats   the model variables (batch_stats is {} without BN)
  opt_state             optax state of SGD with momentum and weight decay
  base_lr               () the member's base learning rate (a traced value)
  diverged              () bool, set once and never cleared
  diverged_step         () int32, the step at which it diverged, -1 if never

An arm's state stacks these along a leading member axis M, and
`make_arm_step` returns one jitted program that advances all M members on a
shared batch: `jit(vmap(member_step))` (or `jit(lax.map(member_step))`),
with the learning rate a per-member traced value so that no rate triggers a
recompilation.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bnjax import data, forward, models

State = dict[str, Any]
Metrics = dict[str, jax.Array]
METRIC_NAMES = ("train_loss", "train_accuracy", "grad_norm", "param_norm")


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

  Piecewise constant: lr_decay**k after the k-th boundary (fractions of
  num_steps), and warmup_factor during the first warmup_steps.
  """
  num_steps = train_config["num_steps"]
  boundaries = jnp.asarray([int(b * num_steps) for b in train_config["lr_boundaries"]])
  factor = train_config["lr_decay"] ** jnp.sum(step >= boundaries)
  warm = step < train_config["warmup_steps"]
  return jnp.where(warm, train_config["warmup_factor"], factor).astype(jnp.float32)


def init_member(model: nn.Module, tx: optax.GradientTransformation, seed: int | jax.Array,
                base_lr: float | jax.Array) -> State:
  """A member's initial state; its variables are a pure function of `seed`."""
  variables = models.init_variables(model, jax.random.key(seed),
                                    jnp.zeros((1, *data.IMAGE_SHAPE)), train=False)
  return member_state(variables, tx, base_lr)


def member_state(variables: Mapping[str, Any], tx: optax.GradientTransformation,
                 base_lr: float | jax.Array) -> State:
  """A fresh member state around given model variables ({params, batch_stats})."""
  params = variables["params"]
  return {"params": params, "batch_stats": variables.get("batch_stats", {}),
          "opt_state": tx.init(params), "base_lr": jnp.asarray(base_lr, jnp.float32),
          "diverged": jnp.asarray(False), "diverged_step": jnp.asarray(-1, jnp.int32)}


def init_arm(model: nn.Module, tx: optax.GradientTransformation, seeds: tuple[int, ...],
             lrs_M: jax.Array) -> State:
  """Stacked initial states of an arm's members: vmap(init) over (seed, lr).

  Run op by op, not jitted: the same numbers (bit for bit) in less time,
  since init runs once and compiling it cost more than running it (ResNet-110,
  9 members, 2-core CPU: 7.7 s against 8.7 s with the compile).
  """
  init = functools.partial(init_member, model, tx)
  return jax.vmap(init)(jnp.asarray(seeds, jnp.uint32), jnp.asarray(lrs_M, jnp.float32))


def model_variables(state: State) -> dict[str, Any]:
  """A member state's {params, batch_stats}, what `model.apply` takes."""
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()


def global_norm(tree: Any) -> jax.Array:
  return optax.tree.norm(tree)


def member_step(model: nn.Module, tx: optax.GradientTransformation,
                train_config: Mapping[str, Any], state: State, images_BxHxWxC: jax.Array,
                labels_B: jax.Array, step: jax.Array) -> tuple[State, Metrics]:
  """One SGD step of one member; a diverged member is returned unchanged.

  The member is marked diverged at `step` when any activation of its
  forward pass, its loss, its gradient or its new parameters is not finite,
  or its loss exceeds `max_loss`; from then on its state is frozen, so it
  can never spread NaNs or slow the others. The loss and accuracy of a
  step whose forward pass overflowed are reported as NaN, never as the
  number a masked overflow can produce (see `bnjax.forward`).
  """
  def loss_fn(params):
    logits, updates, finite = forward.apply(
        model, {"params": params, "batch_stats": state["batch_stats"]}, images_BxHxWxC,
        train=True, mutable=["batch_stats"])
    return cross_entropy(logits, labels_B), (logits, updates.get("batch_stats", {}), finite)

  (loss, (logits, batch_stats, finite)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state["params"])
  finite = finite & jnp.isfinite(loss) & forward.all_finite(grads)
  lr = state["base_lr"] * lr_factor(step, train_config)
  opt_state = state["opt_state"]
  opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
  updates, opt_state = tx.update(grads, opt_state, state["params"])
  params = optax.apply_updates(state["params"], updates)

  healthy = finite & (loss <= train_config["max_loss"]) & forward.all_finite(params)
  diverges_now = ~state["diverged"] & ~healthy
  frozen = state["diverged"] | diverges_now
  stepped = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}
  new_state = {k: jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state[k], v)
               for k, v in stepped.items()}
  new_state.update(
      base_lr=state["base_lr"], diverged=frozen,
      diverged_step=jnp.where(diverges_now, step.astype(jnp.int32), state["diverged_step"]))
  metrics = {
      "train_loss": jnp.where(finite, loss, jnp.nan),
      "train_accuracy": jnp.where(finite, jnp.mean(jnp.argmax(logits, -1) == labels_B), jnp.nan),
      "grad_norm": global_norm(grads),
      "param_norm": global_norm(new_state["params"]),
  }
  return new_state, metrics


def make_arm_step(model: nn.Module, tx: optax.GradientTransformation,
                  train_config: Mapping[str, Any], augmentation: bool,
                  loop_members: int | None = None
                  ) -> Callable[[State, Metrics, data.Dataset, jax.Array], tuple[State, Metrics]]:
  """The jitted step of a whole arm: (states, metric_sums, dataset, step).

  All members see training batch `step` of the shared data stream. With
  `loop_members` None the step is vmapped over the members (every conv a
  grouped convolution); with k >= 1 the members run one after another
  inside the same program (`lax.map`), k of them vmapped together per
  iteration, so that one dispatch advances them all without grouped convs
  for k = 1. Per-member metrics are added to `metric_sums` (each (M,)) on
  the device, so the host fetches them only when it logs. States and sums
  are donated.
  """
  train_config = dict(train_config)
  step_fn = functools.partial(member_step, model, tx, train_config)

  def all_members(states: State, images: jax.Array, labels: jax.Array,
                  step: jax.Array) -> tuple[State, Metrics]:
    one = lambda state: step_fn(state, images, labels, step)
    if loop_members is None:
      return jax.vmap(one)(states)
    return jax.lax.map(one, states, batch_size=loop_members if loop_members > 1 else None)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def arm_step(states: State, sums: Metrics, dataset: data.Dataset,
               step: jax.Array) -> tuple[State, Metrics]:
    images, labels = data.train_batch(dataset, train_config["data_seed"], step,
                                      train_config["batch_size"], augmentation)
    states, metrics = all_members(states, images, labels, step)
    return states, jax.tree.map(jnp.add, sums, metrics)

  return arm_step


def zero_metrics(num_members: int) -> Metrics:
  return {name: jnp.zeros((num_members,), jnp.float32) for name in METRIC_NAMES}


def make_arm_eval(model: nn.Module, batch_size: int
                  ) -> Callable[[State, data.Dataset], Metrics]:
  """The jitted test evaluation of all members: {test_loss, test_accuracy} (M,).

  Uses the running BN statistics; loops over the test set inside the program.
  """
  def member_logits(state: State, images: jax.Array) -> jax.Array:
    return model.apply(model_variables(state), images, train=False)

  @jax.jit
  def arm_eval(states: State, dataset: data.Dataset) -> Metrics:
    num_batches = -(-dataset.test.size // batch_size)

    def body(i, totals_Mx2):
      images, labels, mask_B = data.test_batch(dataset, i, batch_size)
      logits_MxBxK = jax.vmap(member_logits, in_axes=(0, None))(states, images)
      losses_MxB = optax.softmax_cross_entropy_with_integer_labels(
          logits_MxBxK, jnp.broadcast_to(labels, logits_MxBxK.shape[:2]))
      correct_MxB = jnp.argmax(logits_MxBxK, -1) == labels
      return totals_Mx2 + jnp.stack([(losses_MxB * mask_B).sum(-1),
                                     (correct_MxB * mask_B).sum(-1)], -1)

    num_members = states["base_lr"].shape[0]
    totals = jax.lax.fori_loop(0, num_batches, body, jnp.zeros((num_members, 2)))
    totals = totals / dataset.test.size
    return {"test_loss": totals[:, 0], "test_accuracy": totals[:, 1]}

  return arm_eval
