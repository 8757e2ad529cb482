"""Readable text for benchmark records: one row per measurement, and the table.

    python -m bench.report bench/results/cpu_resnet20.json ...
    python -m bench.report bench/results/gpu-h200/

prints the records of saved results as Markdown tables, the form
docs/performance.md quotes them in. A folder is the output of bench/gpu.sh:
its results.json becomes the preflight's line, one throughput table, one
compile-time table, the ResNet-110 rows against the F1 grid's target, the
startup table, and the rows that did not run and why.
"""

import json
import os
import sys
from typing import Any

MAX_SPREAD = 0.05  # rows whose rounds differ by more are flagged

COLUMNS = (  # (header, width, format of the record's value)
    ("framework", 9, "{framework}"),
    ("depth", 5, "{depth}"),
    ("M", 3, "{members}"),
    ("executor", 18, "{executor_label}"),
    ("scan", 4, "{scan_text}"),
    ("dtype", 8, "{dtype_text}"),
    ("img/s", 9, "{images_per_s:.1f}"),
    ("±%", 4, "{spread_pct}"),
    ("img/s/mem", 9, "{images_per_s_per_member:.1f}"),
    ("step ms", 9, "{step_ms:.1f}"),
    ("compile s", 9, "{compile_text}"),
    ("peak MiB", 9, "{peak_mib}"),
    ("input %", 7, "{input_pct}"),
    ("vs best", 7, "{vs_best_text}"),
    ("vs torch", 8, "{vs_torch_text}"),
)


def _fields(record: dict[str, Any]) -> dict[str, Any]:
  """The record plus the derived display values the columns use."""
  executor = record.get("executor", "")
  resolved = record.get("resolved_executor")
  if resolved and resolved != executor:
    executor = f"{executor}->{resolved}"
  if record.get("framework") == "torch":
    executor = "compiled" if record.get("compiled") else "eager"
    executor += ", 1 by 1"
  peak = record.get("peak_memory_bytes")
  peak_mib = "-" if peak is None else f"{peak / 2**20:.0f}"
  if peak is not None and record.get("peak_memory_source") == "process max RSS":
    peak_mib += "*"
  scan = record.get("scan_blocks")
  return {**record, "executor_label": executor, "step_ms": 1e3 * record["step_time_s"],
          "dtype_text": dtype_text(record), "compile_text": compile_text(record),
          "peak_mib": peak_mib, "scan_text": "-" if scan is None else ("yes" if scan else "no"),
          "spread_pct": _maybe(record.get("spread"), "{:.0f}", 100),
          "input_pct": _maybe(record.get("input_share"), "{:.0f}", 100),
          "vs_best_text": _maybe(record.get("vs_best"), "{:.2f}x"),
          "vs_torch_text": _maybe(record.get("vs_torch"), "{:.2f}x")}


def _maybe(value: float | None, fmt: str, scale: float = 1.0) -> str:
  return "-" if value is None else fmt.format(scale * value)


def dtype_text(record: dict[str, Any]) -> str:
  """The compute dtype, with the float32 matmul precision where it is not JAX's default."""
  precision = record.get("precision") or "default"
  return record["dtype"] if precision == "default" else f"{record['dtype']}/{precision}"


def compile_text(record: dict[str, Any]) -> str:
  """Compile seconds; "r" marks a program reused in-process, "c" one loaded from the cache."""
  text = f"{record['compile_time_s']:.1f}"
  if record.get("new_programs") == 0:
    return text + " r"
  if record.get("cache_hits"):
    return text + " c"
  return text


def _error_row(record: dict[str, Any], cells: int) -> list[str]:
  """The cells of a record of a measurement that failed: its identity, then the error."""
  scan = record.get("scan_blocks")
  identity = [record["framework"], str(record["depth"]), str(record["members"]),
              record.get("executor", ""), "-" if scan is None else ("yes" if scan else "no"),
              dtype_text(record)]
  return identity + [f"failed: {record['error']}"] + ["-"] * (cells - len(identity) - 1)


def markdown_row(record: dict[str, Any]) -> str:
  """One Markdown table line for a throughput or compile-only record."""
  if record.get("mode") == "compile_only":
    scan = "scanned" if record.get("scan_blocks") else "unrolled"
    return (f"| ResNet-{record['depth']} | {record['members']} | {scan} | {dtype_text(record)} |"
            f" {record['lower_time_s']:.1f} | {record['compile_time_s']:.1f} |"
            f" {record['lower_time_s'] + record['compile_time_s']:.1f} |")
  if "error" in record:
    return "| " + " | ".join(_error_row(record, len(COLUMNS))) + " |"
  fields = _fields(record)
  return "| " + " | ".join(fmt.format(**fields).strip() for _, _, fmt in COLUMNS) + " |"


def device_line(d: dict[str, Any]) -> str:
  """E.g. "cpu (cpu, 2 CPUs, jax 0.10.2, torch 2.14.1)": what the records were measured on."""
  torch = f", torch {d['torch_version']}" if "torch_version" in d else ""
  return f"{d['device_kind']} ({d['backend']}, {d['cpu_count']} CPUs, jax {d['jax_version']}{torch})"


def markdown(results: dict[str, Any]) -> str:
  """The device line and a Markdown table of every record, plus the notes."""
  records = results["records"]
  lines = [device_line(results["device"]), ""]
  if records and records[0].get("mode") == "compile_only":
    names = ["model", "M", "blocks", "dtype", "trace+lower s", "compile s", "total s"]
  else:
    names = [name for name, _, _ in COLUMNS]
  lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
  lines += [markdown_row(r) for r in records]
  return "\n".join(lines + [""] + [f"- {n}" for n in notes(records)])


def row(record: dict[str, Any]) -> str:
  """One line of the table for a throughput record."""
  if record.get("mode") == "compile_only":
    scan = "scanned blocks" if record.get("scan_blocks") else "unrolled blocks"
    return (f"ResNet-{record['depth']} M={record['members']} {dtype_text(record)} vmapped step,"
            f" {scan}: trace+lower {record['lower_time_s']:.1f} s,"
            f" compile {record['compile_time_s']:.1f} s")
  if "error" in record:
    return " ".join(_error_row(record, 7))
  fields = _fields(record)
  return " ".join(f"{fmt.format(**fields):>{width}}" for _, width, fmt in COLUMNS)


def header() -> str:
  return " ".join(f"{name:>{width}}" for name, width, _ in COLUMNS)


def table(results: dict[str, Any]) -> str:
  """The device line, the column headers and every record, plus notes."""
  lines = ["\n" + device_line(results["device"])]
  records = results["records"]
  if records and records[0].get("mode") != "compile_only":
    lines += [header(), "-" * len(header())]
  lines += [row(r) for r in records]
  return "\n".join(lines + [f"note: {n}" for n in notes(records)])


def model_text(record: dict[str, Any]) -> str:
  """E.g. "norm=fixup, shortcut=B": the model a record timed (older records: BN, option A)."""
  return f"norm={record.get('norm', 'batch')}, shortcut={record.get('shortcut', 'A')}"


def model_note(records: list[dict[str, Any]]) -> list[str]:
  """Which model the rows timed, when it is not BN with option A (the table has no column)."""
  models = sorted({model_text(r) for r in records})
  if models in ([], [model_text({})]):
    return []
  if len(models) == 1:
    return [f"every row times {models[0]}."]
  return ["rows time different models: " + "; ".join(
      f"{_label(r)}: {model_text(r)}" for r in records) + "."]


def notes(records: list[dict[str, Any]]) -> list[str]:
  """The footnotes a table of these records needs."""
  found = sorted({r["note"] for r in records if r.get("note")})
  found += model_note(records)
  found += auto_summary(records)
  if any(r.get("peak_memory_source") == "process max RSS" for r in records):
    found.append("peak MiB marked * is the process's max RSS (no device memory stats here).")
  if any(r.get("new_programs") == 0 for r in records):
    found.append("compile s marked r: the row reused a program an earlier row of the same run"
                 " compiled (executors that run the same program share it).")
  if any(r.get("cache_hits") and r.get("new_programs") for r in records):
    found.append("compile s marked c: the program came from the persistent compilation cache"
                 " (compiled by an earlier run); cold compile times are in the compile-only rows.")
  noisy = [r for r in records if r.get("spread", 0) > MAX_SPREAD]
  if noisy:
    found.append(f"{len(noisy)} row(s) have a spread over {100 * MAX_SPREAD:.0f}%: "
                 + ", ".join(_label(r) for r in noisy) + ".")
  return found


def _label(record: dict[str, Any]) -> str:
  """E.g. "ResNet-110 M=18 float32 vmap": which row a note is about."""
  scan = " scanned" if record.get("scan_blocks") else ""
  return (f"{record['framework']} ResNet-{record['depth']} M={record['members']}"
          f" {dtype_text(record)}{scan} {record.get('executor', '')}")


def auto_summary(records: list[dict[str, Any]]) -> list[str]:
  """One line per `auto` record: what it chose and how close it came to the best."""
  lines = []
  for r in records:
    if r.get("executor") == "auto" and "vs_best" in r:
      group = [o for o in records if o.get("framework") == "bnjax" and o["executor"] != "auto"
               and "error" not in o and all(o.get(k) == r.get(k) for k in
                                            ("depth", "members", "dtype", "scan_blocks",
                                             "precision"))]
      best = max(group, key=lambda o: o["images_per_s"])
      scan = ", scanned blocks" if r.get("scan_blocks") else ""
      line = (f"ResNet-{r['depth']} M={r['members']} {r['dtype']}{scan}: auto ->"
              f" {r['resolved_executor']} ran at {100 * r['vs_best']:.0f}% of the best"
              f" executor ({best['executor']})")
      if "choice_vs_best" in r:
        line += (f"; its choice's own row ran at {100 * r['choice_vs_best']:.0f}%"
                 " (the same program: the gap between the two is timing noise)")
      lines.append(line + ".")
  return lines


# The F1 grid (18 ResNet-110 members, 64k steps of batch 128) in one GPU-hour.
TARGET_IMAGES_PER_S = 41_000
RESNET110_TRAIN_GFLOP = 1.5  # per 32x32 image: forward 0.51, backward about twice that


def target_lines(records: list[dict[str, Any]]) -> list[str]:
  """For each ResNet-110 group (M, dtype, precision, scan): its best executor against the target."""
  groups: dict[tuple, dict[str, Any]] = {}
  for r in records:
    if (r.get("framework") == "bnjax" and r.get("depth") == 110 and "images_per_s" in r
        and r.get("executor") != "auto"):
      key = (r["members"], dtype_text(r), bool(r.get("scan_blocks")))
      if key not in groups or r["images_per_s"] > groups[key]["images_per_s"]:
        groups[key] = r
  lines = []
  for (members, dtype, scan), r in sorted(groups.items()):
    tflops = r["images_per_s"] * RESNET110_TRAIN_GFLOP / 1e3
    lines.append(f"ResNet-110 M={members} {dtype}{' scanned' if scan else ''}: best {r['executor']}"
                 f" {r['images_per_s']:,.0f} img/s = {tflops:.1f} TFLOP/s of training work,"
                 f" {r['images_per_s'] / TARGET_IMAGES_PER_S:.2f}x the {TARGET_IMAGES_PER_S:,}"
                 " img/s that the F1 grid needs to train in one GPU-hour.")
  return lines


def preflight_line(preflight: dict[str, Any]) -> str:
  """One line: whether the preflight passed, on what, and the executor `auto` picked."""
  if not preflight:
    return "Preflight: not run."
  if not preflight.get("ok"):
    return f"Preflight: failed: {preflight.get('error', 'no result')}"
  found, memory = preflight.get("versions", {}), preflight.get("memory", {})
  packages = found.get("packages", {})
  peak = memory.get("peak_bytes")
  line = (f"Preflight: passed in {preflight.get('seconds', 0):.0f} s on {found.get('device_kind')}"
          f" ({found.get('backend')}; jax {packages.get('jax')}, torch"
          f" {packages.get('torch', 'absent')}); auto -> {found.get('auto')}"
          + (f"; peak {peak / 2**20:.0f} MiB ({memory.get('source')})." if peak else "."))
  return line + "".join(f" Warning: {w}." for w in preflight.get("warnings", []))


def results_markdown(results: dict[str, Any]) -> str:
  """The Markdown of a bench/gpu.sh results.json: preflight, tables, target, rows not measured."""
  records = results.get("records", [])
  parts = [preflight_line(results.get("preflight") or {})]
  if not records:
    parts.append("No throughput results.")
  for compile_only in (False, True):
    part = [r for r in records if (r.get("mode") == "compile_only") == compile_only]
    if part:
      parts.append(markdown({"device": results["device"], "records": part}))
  targets = target_lines(records)
  if targets:
    parts.append("\n".join(f"- {line}" for line in targets))
  startup = results.get("startup")
  if startup and startup.get("launches"):
    parts.append("Startup: " + startup_markdown(startup))
  missing = [r for r in results.get("rows", []) if r.get("status") != "done"]
  if missing:
    parts.append("Rows not measured:\n\n" + "\n".join(
        f"- {r['name']}: {r.get('status', 'not run')}"
        + (f" ({r['reason']})" if r.get("reason") else "") for r in missing))
  return "\n\n".join(parts)


def folder_markdown(folder: str) -> str:
  """The Markdown of a bench/gpu.sh results folder (its results.json)."""
  with open(os.path.join(folder, "results.json")) as f:
    return results_markdown(json.load(f))


STARTUP_ROWS = (  # (label, phase or summary key, its compile part's key)
    ("interpreter", "interpreter", None), ("imports", "imports", None),
    ("backend", "backend", None), ("data", "data", None),
    ("init", "init", "init_compile_s"), ("eval (step 0)", "eval", "eval_compile_s"),
    ("first step", "first_step", "first_step_compile_s"),
    ("**launch to first step**", "to_first_step_s", "compile_s"))


def startup_markdown(results: dict[str, Any]) -> str:
  """A bench.startup result: seconds per phase (compiling in brackets), by launch kind.

  Each number is the median over the launches of its kind; the last column
  is warm over nocache.
  """
  medians = results["medians"]
  kinds = [k for k in ("nocache", "cold", "warm") if k in medians]
  grid, machine = results["grid"], results["device"]
  child = next(l for l in results["launches"] if l["kind"] != "main")
  lines = [f"ResNet-{grid['depth']}, {child['members']} members in {child['arms']} arms, batch"
           f" {grid['batch_size']}, {grid['data']} data, executor {grid['executor']}, on"
           f" {child['device']}; host {machine['cpu']} ({machine['cpu_count']} CPUs); launches"
           " per kind: " + ", ".join(f"{k} {int(medians[k]['launches'])}" for k in kinds), ""]
  ratio = "nocache" in medians and "warm" in medians
  names = ["phase (s)", *kinds] + (["warm/nocache"] if ratio else [])
  lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
  for label, key, compile_key in STARTUP_ROWS:
    cells = []
    for kind in kinds:
      value, part = medians[kind].get(key), medians[kind].get(compile_key or "")
      cells.append("-" if value is None else f"{value:.1f}"
                   + ("" if part is None else f" ({part:.1f})"))
    if ratio and medians["nocache"].get(key, 0.0) >= 0.05:
      cells.append(f"{medians['warm'][key] / medians['nocache'][key]:.2f}")
    elif ratio:
      cells.append("-")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  for launch in results["launches"]:
    if launch["kind"] == "main":
      marks = launch["marks"]
      lines += ["", f"`python -m bnjax.main` ({'with' if 'cold' in kinds else 'without'} the"
                f" cache): its \"Training\" line {marks.get('setup_done_s', float('nan')):.1f} s"
                f" and its first step's log line {marks.get('to_first_step_s', float('nan')):.1f} s"
                " after launch."]
  return "\n".join(lines)


def main(paths: list[str]) -> None:
  for path in paths:
    if os.path.isdir(path):
      print(f"{path}:\n\n{folder_markdown(path)}\n")
      continue
    with open(path) as f:
      results = json.load(f)
    if "launches" in results:
      text = startup_markdown(results)
    elif "records" in results:
      text = markdown(results)
    else:  # e.g. bench.checksums' results: their own numbers, printed by their command
      text = "not a throughput or startup result: skipped."
    print(f"{path}:\n\n{text}\n")


if __name__ == "__main__":
  main(sys.argv[1:])
