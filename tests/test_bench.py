"""The throughput benchmark runs end to end on tiny settings; the torch twin matches bnjax."""

import inspect
import json
import os
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import report, throughput, torch_baseline
from bnjax.models import resnet
from bnjax.models.layers import NORMS

from conftest import REPO

# Every (norm, shortcut) bnjax builds: all but Fixup and SkipInit without a shortcut.
NORM_SHORTCUTS = [(norm, shortcut) for shortcut in resnet.SHORTCUTS for norm in NORMS
                  if shortcut != "none" or norm not in resnet.RESIDUAL_ONLY_NORMS]

RECORD_FIELDS = {
    "framework", "depth", "members", "executor", "resolved_executor", "dtype", "batch",
    "step_time_s", "images_per_s", "images_per_s_per_member", "compile_time_s",
    "peak_memory_bytes", "peak_memory_source", "input_time_s", "input_share",
    "scan_blocks", "repeats", "round_step_time_s", "spread", "vs_best"}


def test_benchmark_writes_json(tmp_path, capsys):
  out = tmp_path / "results.json"
  throughput.main(["--depths=8", "--members=2", "--executors=sequential,auto", "--batch=4",
                   "--steps=1", "--repeats=3", "--warmup=0", "--train_size=64",
                   "--torch=false", f"--out={out}"])
  results = json.loads(out.read_text())
  assert {"device_kind", "backend", "cpu_count"} <= set(results["device"])
  sequential, auto = results["records"]
  for record in (sequential, auto):
    assert RECORD_FIELDS <= set(record)
    assert record["members"] == 2 and record["calls_per_step"] == 2
    assert len(record["round_step_time_s"]) == 3
    assert record["step_time_s"] == sorted(record["round_step_time_s"])[1]
    assert record["images_per_s"] == pytest.approx(2 * record["images_per_s_per_member"])
    assert record["step_time_s"] > 0 and record["peak_memory_bytes"] > 0
    assert 0 < record["input_share"]
  assert sequential["vs_best"] == 1.0 and auto["resolved_executor"] == "sequential"
  assert auto["vs_best"] == pytest.approx(auto["images_per_s"] / sequential["images_per_s"])
  assert auto["choice_vs_best"] == 1.0
  assert "auto -> sequential ran at" in capsys.readouterr().out
  table = report.markdown(results)
  assert table.count("\n| bnjax | 8 | 2 |") == 2 and "its choice's own row ran at 100%" in table


def test_compile_only(tmp_path, monkeypatch):
  out = tmp_path / "compile.json"
  built, make_model = [], throughput.make_model

  def recording_make_model(*args, **kwargs):
    built.append(make_model(*args, **kwargs))
    return built[-1]

  monkeypatch.setattr(throughput, "make_model", recording_make_model)
  throughput.main(["--compile_only", "--depths=8", "--members=1", "--batch=4",
                   "--scan_blocks=false,true", "--shortcut=B", "--train_size=64", f"--out={out}"])
  unrolled, scanned = json.loads(out.read_text())["records"]
  assert unrolled["scan_blocks"] is False and scanned["scan_blocks"] is True
  assert [model.shortcut for model in built] == ["B", "B"]
  for record in (unrolled, scanned):
    assert record["mode"] == "compile_only" and record["compile_time_s"] > 0
    assert record["shortcut"] == "B"
  assert "| ResNet-8 | 1 | scanned | float32 |" in report.markdown(json.loads(out.read_text()))


def test_bad_executor_is_one_sentence():
  with pytest.raises(SystemExit, match="Unknown executor"):
    throughput.parse_args(["--executors=threads"])


def _num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def test_bench_accepts_every_norm_of_bnjax_and_refuses_others_in_one_sentence():
  for norm in NORMS:
    assert throughput.parse_args([f"--norm={norm}"]).norm == norm
  with pytest.raises(SystemExit, match=r"^Unknown norm 'instance'; use one of \[.*\]\.$"):
    throughput.parse_args(["--norm=instance"])


def test_bench_accepts_every_shortcut_of_bnjax_and_refuses_others_in_one_sentence():
  for shortcut in resnet.SHORTCUTS:
    assert throughput.parse_args([f"--shortcut={shortcut}"]).shortcut == shortcut
  with pytest.raises(SystemExit, match=r"^Unknown shortcut 'C'; use one of \[.*\]\.$"):
    throughput.parse_args(["--shortcut=C"])
  for norm in resnet.RESIDUAL_ONLY_NORMS:
    with pytest.raises(SystemExit, match=rf"^--norm={norm} needs a shortcut; use --shortcut=A"
                       r" or --shortcut=B\.$"):
      throughput.parse_args([f"--norm={norm}", "--shortcut=none"])


def test_bench_passes_the_shortcut_to_the_baseline(monkeypatch):
  """--shortcut reaches `torch_baseline.measure` in the baseline's process and its twin."""
  pytest.importorskip("torch")
  from bench import torch_resnet
  commands = []

  def run(command, **_):
    commands.append(command)
    return subprocess.CompletedProcess(command, 0, stdout='{"peak_memory": [1, "x"]}\n')

  monkeypatch.setattr(torch_baseline.subprocess, "run", run)
  settings = throughput.parse_args(["--norm=group", "--shortcut=B"])
  record = throughput.measure_torch(8, 1, "float32", settings)
  assert record["norm"] == "group" and record["shortcut"] == "B"
  args = inspect.signature(torch_baseline.measure).bind(*json.loads(commands[0][-1])).arguments
  assert (args["norm"], args["shortcut"]) == ("group", "B")
  model, _ = torch_baseline._make_member(8, "group", "B", "cpu", 0)
  assert isinstance(model.blocks[1].projection, torch_resnet.ConvNorm)
  assert model.blocks[1].projection.conv.weight.shape == (32, 16, 1, 1)
  assert not hasattr(model.blocks[0], "projection")  # the identity needs none


def test_torch_resnet_knows_the_norms_bnjax_knows():
  pytest.importorskip("torch")
  from bench import torch_resnet
  assert torch_resnet.NORMS == NORMS
  with pytest.raises(ValueError, match=r"^Unknown norm 'instance'; use one of \[.*\]\.$"):
    torch_resnet.CifarResNet(8, "instance")


def test_torch_resnet_knows_the_shortcuts_bnjax_knows_and_refuses_what_it_refuses():
  pytest.importorskip("torch")
  from bench import torch_resnet
  assert torch_resnet.SHORTCUTS == resnet.SHORTCUTS
  assert torch_resnet.RESIDUAL_ONLY_NORMS == resnet.RESIDUAL_ONLY_NORMS
  images = jnp.zeros((1, 32, 32, 3))
  for norm, shortcut in [("batch", "C"), ("fixup", "none"), ("skipinit", "none")]:
    with pytest.raises(ValueError) as bnjax_error:
      jax.eval_shape(resnet.CifarResNet(8, norm, shortcut).init, jax.random.key(0), images)
    with pytest.raises(ValueError, match=r"^[^.]*\.$") as twin_error:  # one sentence
      torch_resnet.CifarResNet(8, norm, shortcut)
    assert str(twin_error.value) == str(bnjax_error.value)


@pytest.mark.parametrize("norm,shortcut", NORM_SHORTCUTS)
def test_torch_resnet_matches_bnjax_parameter_count(norm, shortcut):
  pytest.importorskip("torch")
  from bench import torch_resnet
  model = throughput.make_model(20, norm, "float32", shortcut=shortcut)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  expected = _num_params(variables["params"])
  if norm == "batch":  # B adds two 1x1 projections and their BN: 16 * 32 + 64 + 32 * 64 + 128
    assert expected == {"A": 269_722, "B": 272_474, "none": 269_722}[shortcut]
  assert torch_resnet.num_parameters(torch_resnet.CifarResNet(20, norm, shortcut)) == expected


def _torch_name(path: str, n: int) -> str:
  """The twin's name of bnjax's parameter `path` ("stage2_block00/conv_norm1/conv/kernel")."""
  parts = path.split("/")
  match = re.fullmatch(r"stage(\d)_block(\d+)", parts[0])
  if match:  # stage s, block i is the twin's blocks[(s - 1) * n + i]
    parts[:1] = ["blocks", str((int(match.group(1)) - 1) * n + int(match.group(2)))]
  if parts[-1] == "kernel" or parts[-2:] == ["norm", "scale"]:
    parts[-1] = "weight"
  if parts[0] == "head_norm":  # bnjax's HeadNorm holds its BN as `norm`; the twin's is the BN
    del parts[1]
  return ".".join(parts)


def _to_torch(path: str, value: np.ndarray) -> np.ndarray:
  """A bnjax parameter in the twin's layout: conv kernels HWIO -> OIHW, dense (I, O) -> (O, I)."""
  if path.endswith("kernel"):
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _random_params(shapes, rng: np.random.Generator) -> dict:
  """Parameters of bnjax's shapes, all nonzero: kernels He-normal, scalars and vectors N(0, 1/4).

  Random values rather than an initialisation make every parameter count,
  Fixup's and SkipInit's zero-initialised ones and each scalar included.
  """
  def draw(leaf):
    std = np.sqrt(2 / np.prod(leaf.shape[:-1])) if len(leaf.shape) >= 2 else 0.5
    return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree.map(draw, shapes)


# Every norm with option A; projections (B) under BN, none, Fixup, SkipInit and BN in stage 3
# only (a projection with a bias in stage 2, with BN in stage 3); plain networks.
FORWARD_CASES = [(norm, "A") for norm in NORMS] + [
    ("batch", "B"), ("none", "B"), ("fixup", "B"), ("skipinit", "B"), ("batch_last", "B"),
    ("batch", "none"), ("none", "none"), ("group", "none")]


@pytest.mark.parametrize("norm,shortcut", FORWARD_CASES)
def test_torch_resnet_computes_what_bnjax_computes(norm, shortcut):
  """The same parameters in bnjax's ResNet-8 and in the twin give the same logits.

  BN uses the batch's statistics, as in training.
  """
  torch = pytest.importorskip("torch")
  from bench import torch_resnet
  depth, rng = 8, np.random.default_rng(0)
  model = throughput.make_model(depth, norm, "float32", shortcut=shortcut)
  images = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  params = _random_params(shapes, rng)
  logits, _ = model.apply({"params": params}, images, train=True, mutable=["batch_stats"])

  twin = torch_resnet.CifarResNet(depth, norm, shortcut)
  n = torch_resnet.blocks_per_stage(depth)
  state = {_torch_name(path, n): torch.from_numpy(np.ascontiguousarray(_to_torch(path, value)))
           for path, value in flax.traverse_util.flatten_dict(params, sep="/").items()}
  assert set(state) == {name for name, _ in twin.named_parameters()}
  twin.load_state_dict(state, strict=False)  # strict would also ask for BN's running statistics
  twin.train()
  with torch.no_grad():
    twin_logits = twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  scale = np.abs(np.asarray(logits)).max()
  assert scale > 0.1
  np.testing.assert_allclose(twin_logits, logits, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("norm", ["fixup", "skipinit"])
def test_torch_resnet_fixup_and_skipinit_start_as_their_shortcut_path(norm, shortcut):
  torch = pytest.importorskip("torch")
  from bench import torch_resnet
  torch.manual_seed(0)
  twin = torch_resnet.CifarResNet(14, norm, shortcut)
  images = torch.randn(2, 3, 32, 32)
  with torch.no_grad():
    x = torch.relu(twin.stem(images))
    for block in twin.blocks:
      assert torch.equal(block.branch(x), torch.zeros_like(block.shortcut(x)))
      x = torch.relu(block.shortcut(x))
    shortcut_logits = twin.classifier(x.mean(dim=(2, 3)))
    logits = twin(images)
  assert torch.equal(logits, shortcut_logits)
  if norm == "fixup":  # the zero classifier: every logit starts at 0
    assert not logits.any()
  else:
    assert logits.abs().max() > 0


def test_torch_resnet_fixup_initialises_as_bnjax():
  """Each branch's first conv He-normal times L^(-1/2), its second conv and the head zero."""
  torch = pytest.importorskip("torch")
  from bench import torch_resnet
  torch.manual_seed(0)
  twin = torch_resnet.CifarResNet(14, "fixup")
  num_blocks = len(twin.blocks)
  assert num_blocks == 6
  for block in twin.blocks:
    kernel = block.conv_norm1.conv.weight
    assert kernel.std().item() == pytest.approx((2 / kernel[0].numel() / num_blocks) ** 0.5,
                                                rel=0.1)
    assert not block.conv_norm2.conv.weight.any() and block.scale.item() == 1
  assert not twin.classifier.weight.any() and not twin.classifier.bias.any()


def test_gpu_grid_runs_the_rows_in_the_order_of_what_they_decide():
  from bench import gpu_grid
  Row = gpu_grid.Row
  rows = gpu_grid.grid(gpu_grid.GPU)
  names = [r.name for r in rows]
  assert len(set(names)) == len(names)
  assert rows[:11] == [
      Row(110, 18), Row(110, 18, kind="torch"),  # 1. every executor in TF32, the baseline
      Row(110, 18, "bfloat16"), Row(110, 18, "bfloat16", kind="torch"),  # 2. in bfloat16
      Row(20, 18), Row(20, 18, kind="torch"),  # 3. ResNet-20
      Row(110, 1, executors=("vmap", "sequential", "auto")), Row(110, 4), Row(110, 32),  # 4. M
      Row(110, 18, kind="compile"), Row(110, 2, kind="startup")]  # 5. compile-only, 6. startup
  assert set(rows[0].executors) == set(throughput.executor_lib.EXECUTORS)
  assert {"r110-m18-f32-scan", "r110-m18-f32highest", "compile-r20-m18"} <= set(names[11:])
  tiny = gpu_grid.grid(gpu_grid.TINY)
  assert [r.kind for r in tiny] == [r.kind for r in rows if r.members != 4 and r.members != 32]
  assert "--steps=2" in tiny[0].command(gpu_grid.TINY, "python", "work")
  torch_row = tiny[1].command(gpu_grid.TINY, "python", "work")
  assert "--executors=" in torch_row and "--torch=true" in torch_row


def test_gpu_costs_are_the_tiny_cpu_grids_scaled():
  from bench import gpu_grid
  tiny, gpu = gpu_grid.TINY, gpu_grid.GPU
  assert gpu == gpu_grid.gpu_scale(tiny)
  assert gpu.trace_s[110] == pytest.approx(tiny.trace_s[tiny.big] * 110 / tiny.big)
  assert gpu.compile_s[110] > gpu.compile_s[20] > 0
  assert gpu.member_step_s[110] == pytest.approx(
      tiny.member_step_s[tiny.big] * (110 / tiny.big) * (128 / tiny.batch) / gpu_grid.GPU_SPEEDUP)


def _fake_runner(rows, now, ran, factor):
  """A row runner on the clock `now`: a row takes `factor` x its estimate, at most its share."""
  from bench import gpu_grid
  estimates = dict(zip([r.name for r in rows], gpu_grid.plan(rows, gpu_grid.TINY)))

  def runner(command, env, timeout_s, log, cwd=None):
    out = next(a.split("=", 1)[1] for a in command if a.startswith("--out="))
    ran.append(os.path.splitext(os.path.basename(out))[0])
    seconds = min(factor * estimates[ran[-1]], timeout_s)
    now[0] += seconds
    return (None if seconds >= timeout_s else 0), seconds
  return runner


def test_gpu_grid_skips_rows_past_the_budget_and_keeps_measured_ones(tmp_path):
  from bench import gpu_grid
  rows = gpu_grid.grid(gpu_grid.TINY)
  now, ran = [0.0], []
  runner = _fake_runner(rows, now, ran, factor=2.0)
  guard = gpu_grid.Guard(budget_s=150, reserve_s=10, start=0.0, clock=lambda: now[0])
  results = gpu_grid.Results(str(tmp_path), gpu_grid.TINY, 150)
  done_before = {rows[2].name: {"name": rows[2].name, "status": "done", "actual_s": 3.0}}
  gpu_grid.run_grid(rows, gpu_grid.TINY, str(tmp_path / "work"), guard, results, print,
                    runner, done_before)
  status = {entry["name"]: entry["status"] for entry in results.manifest}
  assert ran[0] == rows[0].name and rows[2].name not in ran
  assert status[rows[2].name] == "done" and now[0] <= 140
  skipped = [e for e in results.manifest if e["status"] == "skipped"]
  assert skipped and all("budget" in e["reason"] for e in skipped)
  assert guard.scale("bnjax") == pytest.approx(2.0, rel=0.3)
  written = json.loads((tmp_path / "manifest.json").read_text())["rows"]
  assert [e["name"] for e in written] == [r.name for r in rows]
  assert gpu_grid.check_out_limits(str(tmp_path)) == []


def test_a_row_that_overruns_its_share_is_killed_and_does_not_eat_the_budget(tmp_path):
  from bench import gpu_grid
  rows = gpu_grid.grid(gpu_grid.TINY)[:2]
  now, ran = [0.0], []
  runner = _fake_runner(rows, now, ran, factor=100.0)  # the first row hangs
  first_s, second_s = gpu_grid.plan(rows, gpu_grid.TINY)
  share_s = 2 * first_s + gpu_grid.TINY.margin_s
  overrun = share_s / first_s  # how far the finished row's estimate was off
  budget_s = 10 + share_s + overrun * second_s - 1  # the second row fits, unless scaled by that
  guard = gpu_grid.Guard(budget_s=budget_s, reserve_s=10, start=0.0, clock=lambda: now[0])
  results = gpu_grid.Results(str(tmp_path), gpu_grid.TINY, budget_s)
  gpu_grid.run_grid(rows, gpu_grid.TINY, str(tmp_path / "work"), guard, results, print, runner)
  first = results.manifest[0]
  assert first["status"].startswith("stopped after") and "share" in first["status"]
  assert first["actual_s"] == pytest.approx(share_s, abs=0.1)
  assert results.manifest[1]["status"] == "skipped"  # its estimate, scaled by the overrun
  assert f"x {overrun:.2f}" in results.manifest[1]["reason"]


def test_a_killed_row_leaves_no_process_behind(tmp_path):
  """run_process kills the row's whole process group at its timeout, a grandchild included."""
  from bench import processes
  pid_file = tmp_path / "grandchild.pid"
  script = ("import subprocess, sys, time;"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
  lines = []
  code, seconds = processes.run_process([sys.executable, "-c", script], dict(os.environ), 2.0,
                                        lines.append)
  assert code is None and seconds < 15
  grandchild = int(pid_file.read_text())
  assert not os.path.exists(f"/proc/{grandchild}") or _zombie(grandchild)
  assert lines[0].startswith("$ ")


def _zombie(pid: int) -> bool:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("args, message", [
    (["{out}", "--only=r999-*"], r"--only=r999-\* matches no row; the rows are r110-m18-f32, "),
    (["{out}", "--budget_s=20"], r"--budget_s=20 is too small: the preflight alone may take"),
    (["{file}"], r"OUT=.*file is a file; give a folder"),
    (["{foreign}"], r"OUT=.*foreign holds notes.txt, which bench/gpu.sh did not write"),
    ([], r"give one results folder: bench/gpu.sh OUT"),
])
def test_gpu_sh_refuses_bad_input_in_one_sentence(tmp_path, args, message):
  (tmp_path / "file").write_text("x")
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "notes.txt").write_text("mine")
  paths = {"out": tmp_path / "out", "file": tmp_path / "file", "foreign": tmp_path / "foreign"}
  result = subprocess.run([os.path.join(REPO, "bench", "gpu.sh"),
                           *[a.format(**paths) for a in args]],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable})
  assert result.returncode == 2, result.stderr[-2000:]
  last, = result.stderr.strip().splitlines()
  assert re.match(rf"bench/gpu.sh: {message}", last) and last.endswith(".")
  assert not (tmp_path / "out").exists() and (tmp_path / "file").read_text() == "x"
  assert os.listdir(tmp_path / "foreign") == ["notes.txt"]


def test_report_of_a_gpu_results_folder(tmp_path):
  from bench import gpu_grid
  record = {"framework": "bnjax", "depth": 110, "members": 2, "executor": "vmap",
            "resolved_executor": "vmap", "dtype": "bfloat16", "precision": "default",
            "scan_blocks": False, "step_time_s": 0.5, "images_per_s": 16.0,
            "images_per_s_per_member": 8.0, "compile_time_s": 0.0, "new_programs": 0,
            "spread": 0.08, "peak_memory_bytes": 2**20, "peak_memory_source": "x"}
  failed = {**record, "executor": "map", "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}
  baseline = {"framework": "torch", "depth": 110, "members": 2, "dtype": "bfloat16",
              "precision": "default", "images_per_s": 8.0, "step_time_s": 1.0,
              "images_per_s_per_member": 4.0, "compile_time_s": 0.0, "compiled": True}
  device = {"device_kind": "gpu", "backend": "gpu", "cpu_count": 16, "jax_version": "0"}
  results = gpu_grid.Results(str(tmp_path), gpu_grid.GPU, 100, device=device,
                             records=[record, failed, baseline],
                             preflight={"ok": False, "error": "torch: no CUDA."})
  results.manifest = [{"name": "r110-m2-bf16", "status": "done"},
                      {"name": "r110-m1-f32", "status": "skipped", "reason": "needs ~9 s"}]
  results.write()
  assert sorted(os.listdir(tmp_path)) == ["manifest.json", "results.json", "table.md"]
  table = report.folder_markdown(str(tmp_path))
  assert table == (tmp_path / "table.md").read_text().strip()
  assert table.startswith("Preflight: failed: torch: no CUDA.")
  assert "| bnjax | 110 | 2 | vmap | no | bfloat16 | 16.0 | 8 |" in table
  assert "| 2.00x |" in table  # vs torch, from the baseline's row
  assert "0.0 r" in table and "failed: XlaRuntimeError: RESOURCE_EXHAUSTED" in table
  assert "spread over 5%" in table and "- r110-m1-f32: skipped (needs ~9 s)" in table
  assert "ResNet-110 M=2 bfloat16: best vmap 16 img/s = 0.0 TFLOP/s" in table


def test_preflight_runs_every_check_and_writes_its_results(tmp_path):
  from bench import preflight
  out = tmp_path / "preflight.json"
  results = preflight.main([f"--out={out}"])
  assert json.loads(out.read_text())["ok"] is True
  assert results["versions"]["backend"] == "cpu" and results["versions"]["auto"] == "sequential"
  executors = results["executors"]
  assert set(executors) - {"seconds"} == set(throughput.executor_lib.EXECUTORS)
  assert executors["chunked"]["chunks"] == [3, 1]  # a ragged last chunk
  vmap = executors["vmap"]
  assert len(set(np.round(vmap["train_loss"], 4))) == 2  # two seeds: a mix-up would show
  for losses in (executors[name] for name in throughput.executor_lib.EXECUTORS):
    for key in ("train_loss", "test_loss"):
      np.testing.assert_allclose(losses[key], vmap[key], rtol=preflight.RTOL)
  for check in ("bfloat16", "scan", "highest"):
    assert np.isfinite(results[check]["train_loss"][0])
  assert results["scan"]["train_loss"][0] == pytest.approx(vmap["train_loss"][0],
                                                           rel=preflight.RTOL)
  assert results["compile"]["compile_time_s"] > 0 and results["orbax"]["arrays"] > 10
  assert results["torch"].get("skipped") or results["torch"]["finite"]
  assert results["memory"]["peak_bytes"] > 0


def test_preflight_stops_with_one_sentence_naming_the_check(tmp_path, monkeypatch, capsys):
  from bench import preflight
  with pytest.raises(preflight.PreflightError, match=r"^executor map: its train_loss \[1.0, 3.0\]"
                     r" differs from vmap's \[1.0, 2.0\] by more than 1%\.$"):
    preflight.assert_close("executor map", {"train_loss": [1.0, 3.0]},
                           {"train_loss": [1.0, 2.0]}, "vmap")

  def out_of_memory():
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nwhile allocating")
  monkeypatch.setattr(preflight, "versions", out_of_memory)
  out = tmp_path / "preflight.json"
  with pytest.raises(SystemExit) as stopped:
    preflight.main([f"--out={out}"])
  assert stopped.value.code == 1
  sentence = "versions: RuntimeError: RESOURCE_EXHAUSTED: out of memory."
  assert capsys.readouterr().err.strip().splitlines() == [f"preflight failed: {sentence}"]
  assert json.loads(out.read_text()) == {"ok": False, "error": sentence}


def test_a_failed_preflight_stops_the_gpu_command_before_any_row(tmp_path):
  from bench import gpu_grid

  def failing(command, env, timeout_s, log, cwd=None):
    out = next(a.split("=", 1)[1] for a in command if a.startswith("--out="))
    with open(out, "w") as f:
      json.dump({"ok": False, "error": "executor map: its train_loss is not finite."}, f)
    return 1, 3.0

  results = gpu_grid.Results(str(tmp_path), gpu_grid.TINY, 100)
  guard = gpu_grid.Guard(100)
  with pytest.raises(gpu_grid.UsageError, match=r"^preflight failed: executor map: its"
                     r" train_loss is not finite; no row ran\.$"):
    gpu_grid.run_preflight(gpu_grid.TINY, str(tmp_path), guard, results, print, runner=failing)
  assert results.preflight["ok"] is False and results.preflight["actual_s"] == 3.0


def test_startup_times_every_phase_of_a_launch(tmp_path):
  """One uncached launch of a tiny sweep: the phases a run goes through, as it runs them."""
  out = tmp_path / "startup.json"
  result = subprocess.run(
      [sys.executable, "-m", "bench.startup", "--config.data.name=synthetic",
       "--config.data.synthetic_train_size=64", "--config.data.synthetic_test_size=16",
       "--config.eval_batch_size=16", "--config.train.batch_size=4", "--config.model.depth=8",
       "--config.sweep.lrs=(0.1,)", "--config.sweep.seeds=(0,)", "--nosteady_step",
       "--repeats=1", "--launches=nocache", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  launch = json.loads(out.read_text())["launches"][0]
  assert {"data", "init", "eval", "first_step"} <= set(launch["phases"])


def test_report_names_the_model_when_it_is_not_bn_with_option_a():
  record = {"framework": "bnjax", "depth": 8, "members": 1, "dtype": "float32",
            "executor": "vmap"}
  assert report.model_note([record, {**record, "norm": "batch", "shortcut": "A"}]) == []
  assert report.model_note([{**record, "norm": "fixup", "shortcut": "B"}]) == [
      "every row times norm=fixup, shortcut=B."]
  mixed = report.model_note([record, {**record, "norm": "none"}])
  assert len(mixed) == 1 and "norm=batch, shortcut=A" in mixed[0]
  assert "norm=none, shortcut=A" in mixed[0]


def test_checksum_benchmark_times_checksums_against_the_save_they_guard():
  from bench import checksums
  from bnjax import config as config_lib
  config = config_lib.base_config()
  config.model.depth = 8
  config.sweep.lrs, config.sweep.seeds = (0.1,), (0, 1)
  result = checksums.measure(config, repeats=1)
  # Two arms of two ResNet-8 members (about 78k parameters each): params and momentum.
  assert result["payload_bytes"] > 4 * 2 * 2 * 2 * 70_000
  assert result["checksums_s"] > 0 and result["save_total_s"] >= result["save_blocking_s"] > 0
  assert result["checksums_over_save"] == result["checksums_s"] / result["save_total_s"]
  assert all(len(v) == 1 for v in result["seconds"].values())
