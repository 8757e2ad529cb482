"""The sweep step: vmapped == one by one, divergence isolation, schedule, learning."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import executor, train
from bnjax.models import make_model, resnet

from arms import assert_close, compiled_arm, run_arm, trajectory
from conftest import tiny_config


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_vmapped_sweep_equals_members_run_one_by_one(norm, tiny_dataset):
  config = tiny_config(num_steps=100)
  lrs, seeds = [0.01, 0.05, 0.1], [0, 1, 2]
  together = trajectory(config, tiny_dataset, norm, lrs, seeds, chunk=3, steps=3)
  alone = [trajectory(config, tiny_dataset, norm, [lr], [seed], chunk=1, steps=3)
           for lr, seed in zip(lrs, seeds)]
  for steps, rel in ((1, 1e-6), (3, 1e-4)):  # later steps: rare ReLU flips amplify rounding
    for i in range(len(lrs)):
      for part in ("params", "batch_stats"):
        assert_close(jax.tree.map(lambda x: x[i], getattr(together[steps], part)),
                      jax.tree.map(lambda x: x[0], getattr(alone[i][steps], part)), rel)


def test_scanned_blocks_train_exactly_like_unrolled_blocks(tiny_dataset):
  """scan_blocks is a compilation choice: same start, same trajectory (to rounding)."""
  lrs, seeds = [0.05, 0.1], [0, 1]
  runs = {}
  for scan in (False, True):
    config = tiny_config(num_steps=100)
    config.model.update(depth=14, scan_blocks=scan)
    runs[scan] = trajectory(config, tiny_dataset, "batch", lrs, seeds, chunk=2, steps=2)
  unrolled, scanned = runs[False], [jax.vmap(resnet.unscan)(state) for state in runs[True]]
  jax.tree.map(np.testing.assert_array_equal, scanned[0], unrolled[0])
  # Step 1 differs by rounding alone (measured: 2e-8 in params, 8e-7 in the
  # momentum, which is the raw gradient); by step 2 a rare ReLU flip has
  # amplified it (4e-5 and 3e-3).
  for step, tolerances in ((1, (1e-6, 1e-6, 1e-5)), (2, (1e-4, 1e-4, 1e-2))):
    for part, rel in zip(("params", "batch_stats", "opt_state"), tolerances):
      assert_close(getattr(scanned[step], part), getattr(unrolled[step], part), rel)


def test_loss_bound_marks_a_member_diverged(tiny_dataset):
  config = tiny_config(max_loss=1e-3)  # every loss exceeds it
  states = run_arm(config, tiny_dataset, "batch", [0.01], [0], chunk=1, steps=2)
  assert bool(states.diverged[0]) and int(states.diverged_step[0]) == 0
  initial = run_arm(config, tiny_dataset, "batch", [0.01], [0], chunk=1, steps=0)
  jax.tree.map(np.testing.assert_array_equal, states.params, initial.params)


def test_schedule_follows_boundaries_and_warmup():
  cfg = {"num_steps": 100, "lr_boundaries": (0.5, 0.75), "lr_decay": 0.1,
         "warmup_steps": 10, "warmup_factor": 0.1}
  factors = [float(train.lr_factor(t, cfg)) for t in (0, 9, 10, 49, 50, 74, 75, 99)]
  np.testing.assert_allclose(factors, [0.1, 0.1, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("warmup_steps", [0, 6])
def test_schedule_multiplies_the_decays_of_fractions_that_round_to_one_step(warmup_steps):
  """0.5 and 0.55 of 10 steps are both step 5; warmup 6 ends after it, 0 before it."""
  cfg = {"num_steps": 10, "lr_boundaries": (0.5, 0.55, 0.75), "lr_decay": 0.1,
         "warmup_steps": warmup_steps, "warmup_factor": 0.3}
  d = np.float32(0.1)  # the factors are float32 products of the decay, bit for bit
  decayed = {4: np.float32(1), 5: d * d, 6: d * d, 7: d * d * d, 9: d * d * d}
  expected = {t: np.float32(0.3) if t < warmup_steps else f for t, f in decayed.items()}
  traced = jax.jit(lambda t: train.lr_factor(t, cfg))
  for t, factor in expected.items():
    for got in (traced(jnp.asarray(t, jnp.int32)), train.lr_factor(t, cfg)):
      assert got.dtype == jnp.float32 and got == factor, (t, got, factor)


def test_momentum_sgd_with_weight_decay_matches_the_formula():
  tx = train.make_optimizer(momentum=0.9, weight_decay=0.1)
  params = {"w": jnp.asarray([1.0, -2.0])}
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.5)
  grads = {"w": jnp.asarray([0.2, 0.4])}
  buf = np.zeros(2)
  w = np.asarray([1.0, -2.0])
  for _ in range(3):  # PyTorch: buf = 0.9 buf + (g + wd w); w -= lr buf
    updates, state = tx.update(grads, state, params)
    params = {"w": params["w"] + updates["w"]}
    buf = 0.9 * buf + (np.asarray([0.2, 0.4]) + 0.1 * w)
    w = w - 0.5 * buf
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_the_step_is_traced_once_for_all_steps_and_rates(tiny_dataset, monkeypatch):
  traces = []
  def member_step(*args, **kwargs):
    traces.append(args[-1])  # a Python side effect: runs when jit traces, never when it runs
    return original(*args, **kwargs)
  original = train.member_step
  monkeypatch.setattr(train, "member_step", member_step)
  config = tiny_config(num_steps=100)
  model, tx, _, eval_fn = compiled_arm(config.to_json(), "none")
  step_fn = train.make_arm_step(model, tx, config.train.to_dict(), True)  # a fresh cache
  # Three members: the program test_executors compiles too (one compile for both).
  states = train.init_arm(model, tx, (0, 1, 2), jnp.asarray([0.01, 0.2, 0.05], jnp.float32))
  arm = executor.ArmExecutor.create(step_fn, eval_fn, states, 3)
  for t in range(3):
    arm.step(tiny_dataset, jnp.asarray(t, jnp.int32))
  other_rates = train.init_arm(model, tx, (3, 4, 5), jnp.asarray([0.5, 1e-4, 0.3], jnp.float32))
  arm.load(other_rates, train.zero_metrics(3))
  arm.step(tiny_dataset, jnp.asarray(3, jnp.int32))
  assert len(traces) == 1


def test_bfloat16_compute_follows_float32(tiny_dataset):
  """bf16 activations, float32 parameters, optimizer state and BN statistics."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(num_steps=100, compute_dtype=dtype)
    config.model.norm = "batch"
    model = make_model(config.model.to_dict(), dtype=dtype)
    tx = train.make_optimizer(0.9, 1e-4)
    step_fn = train.make_arm_step(model, tx, config.train.to_dict(), True)
    states = train.init_arm(model, tx, (0,), jnp.asarray([0.05], jnp.float32))
    # As a run steps it (placed as the step lays out its outputs): one compile per dtype.
    arm = executor.ArmExecutor.create(step_fn, train.make_arm_eval(model, 32), states, 1)
    for t in range(40):
      arm.step(tiny_dataset, jnp.asarray(t, jnp.int32))
    states = arm.states
    leaves = jax.tree.leaves((states.params, states.batch_stats, states.opt_state))
    assert {x.dtype for x in leaves} <= {np.dtype("float32"), np.dtype("int32")}
    losses[dtype] = float(arm.take_metric_means(40)["train_loss"][0])
  assert abs(losses["bfloat16"] - losses["float32"]) < 0.05 * losses["float32"], losses


def test_per_seed_streams_give_each_member_the_batches_of_its_own_seed(tiny_dataset):
  """Seeds 0 and 1 trained together on their own streams equal each trained alone on it."""
  config = tiny_config(num_steps=100, data_stream="per_seed")
  together = run_arm(config, tiny_dataset, "none", [0.05, 0.05], [0, 1], chunk=2, steps=2)
  alone = run_arm(config, tiny_dataset, "none", [0.05], [1], chunk=1, steps=2)
  assert_close(jax.tree.map(lambda x: x[1], together.params),
               jax.tree.map(lambda x: x[0], alone.params), 1e-6)
  shared = run_arm(tiny_config(num_steps=100), tiny_dataset, "none", [0.05], [1], chunk=1,
                   steps=2)
  difference = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), alone.params,
                            shared.params)
  assert max(jax.tree.leaves(difference)) > 1e-4  # another stream: other batches


def test_init_compiles_unoptimised_only_on_a_cpu_and_gives_the_same_variables():
  """The no-optimisation init compile was measured to help on XLA:CPU only; bit-identical."""
  assert train.init_compiler_options("cpu") == {"xla_backend_optimization_level": 0}
  assert train.init_compiler_options("gpu") is None and train.init_compiler_options("tpu") is None
  model = make_model(tiny_config().model, num_classes=10)
  seed = jnp.asarray(3, jnp.uint32)
  unoptimised = train.compiled_init("cpu")(model, seed)  # what a CPU run uses
  optimised = train.compiled_init("gpu")(model, seed)  # a GPU's options, compiled for this CPU
  jax.tree.map(np.testing.assert_array_equal, unoptimised, optimised)
  jax.tree.map(np.testing.assert_array_equal, train.init_variables(model, 3), unoptimised)
