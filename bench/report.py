"""Readable text for benchmark records: one row per measurement, and the table.

    python -m bench.report bench/results/cpu_resnet20.json ...

prints the records of saved results as Markdown tables, the form
docs/performance.md quotes them in.
"""

import json
import sys
from typing import Any

COLUMNS = (  # (header, width, format of the record's value)
    ("framework", 9, "{framework}"),
    ("depth", 5, "{depth}"),
    ("M", 3, "{members}"),
    ("executor", 18, "{executor_label}"),
    ("scan", 4, "{scan_text}"),
    ("dtype", 8, "{dtype}"),
    ("img/s", 9, "{images_per_s:.1f}"),
    ("±%", 4, "{spread_pct}"),
    ("img/s/mem", 9, "{images_per_s_per_member:.1f}"),
    ("step ms", 9, "{step_ms:.1f}"),
    ("compile s", 9, "{compile_time_s:.1f}"),
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
          "peak_mib": peak_mib, "scan_text": "-" if scan is None else ("yes" if scan else "no"),
          "spread_pct": _maybe(record.get("spread"), "{:.0f}", 100),
          "input_pct": _maybe(record.get("input_share"), "{:.0f}", 100),
          "vs_best_text": _maybe(record.get("vs_best"), "{:.2f}x"),
          "vs_torch_text": _maybe(record.get("vs_torch"), "{:.2f}x")}


def _maybe(value: float | None, fmt: str, scale: float = 1.0) -> str:
  return "-" if value is None else fmt.format(scale * value)


def markdown_row(record: dict[str, Any]) -> str:
  """One Markdown table line for a throughput or compile-only record."""
  if record.get("mode") == "compile_only":
    scan = "scanned" if record.get("scan_blocks") else "unrolled"
    return (f"| ResNet-{record['depth']} | {record['members']} | {scan} | {record['dtype']} |"
            f" {record['lower_time_s']:.1f} | {record['compile_time_s']:.1f} |"
            f" {record['lower_time_s'] + record['compile_time_s']:.1f} |")
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
    return (f"ResNet-{record['depth']} M={record['members']} {record['dtype']} vmapped step,"
            f" {scan}: trace+lower {record['lower_time_s']:.1f} s,"
            f" compile {record['compile_time_s']:.1f} s")
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


def notes(records: list[dict[str, Any]]) -> list[str]:
  """The footnotes a table of these records needs."""
  found = sorted({r["note"] for r in records if r.get("note")})
  found += auto_summary(records)
  if any(r.get("peak_memory_source") == "process max RSS" for r in records):
    found.append("peak MiB marked * is the process's max RSS (no device memory stats here).")
  return found


def auto_summary(records: list[dict[str, Any]]) -> list[str]:
  """One line per `auto` record: what it chose and how close it came to the best."""
  lines = []
  for r in records:
    if r.get("executor") == "auto" and "vs_best" in r:
      group = [o for o in records if o.get("framework") == "bnjax" and o["executor"] != "auto"
               and all(o.get(k) == r.get(k) for k in ("depth", "members", "dtype", "scan_blocks"))]
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


def main(paths: list[str]) -> None:
  for path in paths:
    with open(path) as f:
      print(f"{path}:\n\n{markdown(json.load(f))}\n")


if __name__ == "__main__":
  main(sys.argv[1:])
