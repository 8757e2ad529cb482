"""Readable text for benchmark records: one row per measurement, and the table."""

from typing import Any

COLUMNS = (  # (header, width, format of the record's value)
    ("framework", 9, "{framework}"),
    ("depth", 5, "{depth}"),
    ("M", 3, "{members}"),
    ("executor", 18, "{executor_label}"),
    ("dtype", 8, "{dtype}"),
    ("img/s", 9, "{images_per_s:.1f}"),
    ("img/s/mem", 9, "{images_per_s_per_member:.1f}"),
    ("step ms", 9, "{step_ms:.1f}"),
    ("compile s", 9, "{compile_time_s:.1f}"),
    ("peak MiB", 9, "{peak_mib}"),
    ("input %", 7, "{input_pct}"),
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
  share = record.get("input_share")
  ratio = record.get("vs_torch")
  return {**record, "executor_label": executor, "step_ms": 1e3 * record["step_time_s"],
          "peak_mib": peak_mib, "input_pct": "-" if share is None else f"{100 * share:.0f}",
          "vs_torch_text": "-" if ratio is None else f"{ratio:.2f}x"}


def row(record: dict[str, Any]) -> str:
  """One line of the table for a throughput record."""
  if record.get("mode") == "compile_only":
    return (f"{record['framework']:>9} {record['depth']:>5} {record['members']:>3} vmap"
            f" {record['dtype']}: lower {record['lower_time_s']:.1f} s,"
            f" compile {record['compile_time_s']:.1f} s")
  fields = _fields(record)
  return " ".join(f"{fmt.format(**fields):>{width}}" for _, width, fmt in COLUMNS)


def header() -> str:
  return " ".join(f"{name:>{width}}" for name, width, _ in COLUMNS)


def table(results: dict[str, Any]) -> str:
  """The device line, the column headers and every record, plus notes."""
  d = results["device"]
  lines = [f"\n{d['device_kind']} ({d['backend']}, {d['cpu_count']} CPUs, jax {d['jax_version']})"]
  records = results["records"]
  if records and records[0].get("mode") != "compile_only":
    lines += [header(), "-" * len(header())]
  lines += [row(r) for r in records]
  notes = sorted({r["note"] for r in records if r.get("note")})
  if any(r.get("peak_memory_source") == "process max RSS" for r in records):
    notes.append("peak MiB marked * is the process's max RSS (no device memory stats here).")
  return "\n".join(lines + [f"note: {n}" for n in notes])
