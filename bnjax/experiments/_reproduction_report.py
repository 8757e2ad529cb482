"""The reproduction report as Markdown, from the result of `bnjax.experiments.reproduce.run`.

Every number in it comes from the result: the rows `bnjax.paper.judge`
made from the members, one per seed, and the inputs compared side by side.
The sentences on what the seeds and the inputs explain are computed from
the same ranges.
"""

import math
from typing import Any

Numbers = dict[str, Any]

# The at-initialisation figures measured on every input.
INPUT_FIGURES = ("F3", "F5", "F6", "F7")
INPUT_TITLES = {"data": "the data", "gaussian": "i.i.d. N(0, 1)", "pink": "Gaussian 1/f²"}


# Readings whose +inf means "no divergent η on the grid" rather than an overflow.
_INF_IS_NONE_ON_GRID = ("f4_first_divergent_eta",)


def number(x: Any, inf: str = "inf") -> str:
  """A measured value: 3 significant digits, "—" where there is none, `inf` for +inf."""
  if x is None:
    return "—"
  x = float(x)
  if math.isnan(x):
    return "NaN"
  if math.isinf(x):
    return inf if x > 0 else "−inf"
  return f"{x:.3g}"


def spread(row: Numbers) -> str:
  """"median [min, max]" of a judged row; the median alone when all members agree."""
  if row["num_measured"] == 0:
    return "not measured"
  inf = "none on the grid" if row["key"].startswith(_INF_IS_NONE_ON_GRID) else "inf"
  if row["min"] == row["max"]:
    return number(row["median"], inf)
  return f"{number(row['median'], inf)} [{number(row['min'], inf)}, {number(row['max'], inf)}]"


def _seeds(count: int) -> str:
  return f"{count} seed" + ("" if count == 1 else "s")


def _side(row: Numbers) -> str:
  """Where a differing median lies: "below" or "above" the band."""
  return "below" if row["median"] < row["low"] else "above"


def _cells(cells: tuple[str, ...]) -> str:
  return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _quantity(row: Numbers) -> str:
  return f"{row['figure']} {row['what']}"


def _seed_list(seeds: list[int]) -> str:
  return ", ".join(str(s) for s in seeds)


def markdown(result: Numbers) -> str:
  """The report: settings, the verdict table, the inputs, the differences, the rest, time."""
  s, rows = result["settings"], result["rows"]
  count = lambda field, value: sum(r[field] == value for r in rows)
  lines = [
      "# Reproduction report: Bjorck et al. (2018) at the paper's size", "",
      "Written by `python -m bnjax.main --config=configs/reproduce.py --workdir=DIR`"
      f" on {result['device']} in {result['total_seconds'] / 60:.1f} minutes, using"
      f" {result['total_cpu_seconds'] / 60:.1f} minutes of CPU time (all threads; the wall-clock"
      " time grows when other work shares the machine, the CPU time much less).", "",
      f"ResNet-{s['depth']}, initialiser `{s['initializer']}`, data: {result['data']}."
      f" **Seeds:** every reading at initialisation (F2, F3, F5, F6, F7) is measured on each of"
      f" the {len(s['seeds'])} seeds {_seed_list(s['seeds'])} (a seed sets the initial weights;"
      f" every seed sees the same batch); F4 at minibatch 1 on seeds"
      f" {_seed_list(s['line_seeds'])}; F1's first steps, F4 at minibatches 4 and 7 and the"
      f" initialiser table on seed {s['first_steps_seed']} only. At initialisation: training"
      f" batch 0 of {s['batch_size']} images. F1's first steps: {s['train_steps']} SGD steps at"
      f" each rate, batch {s['train_batch_size']}, constant rate, except that rates of"
      f" {s['warmup_from_lr']:g} and more run at {s['warmup_factor']:g}× (He et al.'s"
      f" ResNet-110 warm-up), momentum {s['momentum']}, weight decay {s['weight_decay']}; a"
      " member *trains* when it never diverged and its train-mode loss on batch 0 fell. F4's"
      " minibatches 4 and 7 are those of the members at the paper's F4 rates, batch"
      f" {s['train_batch_size']}. η grid: {len(s['etas'])} points from {s['etas'][0]:g} to"
      f" {s['etas'][-1]:g}. F5: the step −{s['update_lr']:g}·g. F2: {s['noise_pool_size']}"
      f" pooled examples, minibatches of {s['noise_batch_size']}. F8: {s['matrix_size']}×"
      f"{s['matrix_size']} matrices.", "",
      f"**Judged by the median over seeds: {count('verdict', 'agrees')} of {len(rows)} readings"
      f" agree, {count('verdict', 'differs')} differ, {count('verdict', 'not measured')} could"
      f" not be measured. Over the whole range of seeds: {count('range', 'inside')} lie inside"
      f" the paper's band, {count('range', 'straddles')} straddle it, {count('range', 'outside')}"
      " lie outside.** A band is the paper's reading with its own reading error, never widened"
      " to let a measurement pass (`bnjax/paper.py`).", "",
      "| figure | quantity | paper | band | measured: median [min, max] | seeds |"
      " verdict (median) | range over seeds |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    band = f"{number(r['low'])} … {number(r['high'])}"
    lines.append(_cells((r["figure"], r["what"], r["reading"], band, spread(r),
                         str(r["num_measured"]), r["verdict"], r["range"])))
  lines += _inputs_section(result) + _differences(result) + _initializer_table(result)
  lines += _first_steps_table(result)
  lines += ["", "## Time", "", "| section | seconds | CPU seconds |", "|---|---|---|"]
  lines += [f"| {name} | {seconds:.0f} | {result['cpu_seconds'][name]:.0f} |"
            for name, seconds in result["seconds"].items()]
  return "\n".join(lines) + "\n"


def _by_input(result: Numbers) -> dict[str, dict[str, Numbers]]:
  """{input: {claim key: judged row}} for the readings measured on every input."""
  return {name: {row["key"]: row for row in rows} for name, rows in result["inputs"].items()}


def _overlap(a: Numbers, b: Numbers) -> bool:
  return a["min"] <= b["max"] and b["min"] <= a["max"]


def input_effects(result: Numbers) -> Numbers:
  """What the input explains, from the seed ranges on each input (claim keys, data first).

  separated: {key: [input pairs whose seed ranges do not overlap]}: the
    input moves the reading by more than the seeds do.
  within_seeds: keys whose ranges overlap on every pair of inputs.
  brought_inside: {key: [stand-ins]}: readings whose median differs from
    the paper on the data but lies inside the band on these stand-ins.
  differ_everywhere: keys whose median differs on every input.
  """
  by_input = _by_input(result)
  names = list(by_input)
  data_rows = by_input[names[0]]
  effects: Numbers = {"separated": {}, "within_seeds": [], "brought_inside": {},
                      "differ_everywhere": []}
  for key, data_row in data_rows.items():
    rows = {n: by_input[n][key] for n in names if by_input[n][key]["num_measured"]}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
             if a in rows and b in rows and not _overlap(rows[a], rows[b])]
    if pairs:
      effects["separated"][key] = pairs
    elif len(rows) > 1:
      effects["within_seeds"].append(key)
    if data_row["verdict"] == "differs":
      inside = [n for n in names[1:] if n in rows and rows[n]["verdict"] == "agrees"]
      if inside:
        effects["brought_inside"][key] = inside
      elif all(rows[n]["verdict"] == "differs" for n in rows):
        effects["differ_everywhere"].append(key)
  return effects


def _inputs_section(result: Numbers) -> list[str]:
  by_input = _by_input(result)
  names = list(by_input)
  if len(names) < 2:
    return []
  first = by_input[names[0]]
  titles = [INPUT_TITLES.get(n, n) for n in names]
  lines = ["", "## The input, side by side", "",
           f"F3, F5, F6 and F7 at initialisation on the same seeds, each on {len(names)} inputs"
           f" of {result['settings']['batch_size']} images with the labels of training batch"
           f" 0: {result['data']}; i.i.d. N(0, 1) pixels; and Gaussian images with a 1/f² power"
           " spectrum, the classic second-order model of natural images (`bnjax.inputs`). The"
           " model sees its data normalised to per-channel mean 0 and std 1, so a stand-in drawn"
           " at CIFAR-10's per-channel mean and std is, after that normalisation, an input with"
           " mean 0 and std 1 per channel: the stand-ins are drawn so, and differ from each"
           " other only in how neighbouring pixels are correlated. Each cell: median [min, max]"
           " over seeds, and the median's verdict.", "",
           "| figure | quantity | band | " + " | ".join(titles) + " |",
           "|---|---|---|" + "---|" * len(names)]
  for key, row in first.items():
    cells = [f"{spread(by_input[n][key])} ({by_input[n][key]['verdict']})" for n in names]
    lines.append(_cells((row["figure"], row["what"],
                         f"{number(row['low'])} … {number(row['high'])}", *cells)))
  lines += ["", *_effects_lines(result, input_effects(result), names)]
  return lines


def _effects_lines(result: Numbers, effects: Numbers, names: list[str]) -> list[str]:
  """What the input explains: one sentence of counts, then the readings, from `input_effects`."""
  rows = _by_input(result)[names[0]]
  title = lambda n: INPUT_TITLES.get(n, n)
  quantity = lambda key: _quantity(rows[key])
  differ = [k for k, r in rows.items() if r["verdict"] == "differs"]
  lines = [f"**What the input explains.** Of the {len(differ)} readings here whose median differs"
           f" from the paper on the data, another input brings {len(effects['brought_inside'])}"
           f" inside the band; the input moves {len(effects['separated'])} of all"
           f" {len(rows)} readings by more than the seeds do (seed ranges that do not"
           f" overlap), and {len(effects['within_seeds'])} stay within the spread over seeds on"
           " every input.", ""]
  if effects["separated"]:
    lines.append("- Moved by the input beyond the spread over seeds: " + "; ".join(
        f"{quantity(k)} ({', '.join(f'{title(a)} vs {title(b)}' for a, b in pairs)})"
        for k, pairs in effects["separated"].items()) + ".")
  if effects["brought_inside"]:
    lines.append("- Differ on the data, inside the band on another input: " + "; ".join(
        f"{quantity(k)} ({', '.join(title(n) for n in ns)})"
        for k, ns in effects["brought_inside"].items()) + ".")
  if effects["differ_everywhere"]:
    lines.append("- Differ on every input: "
                 + "; ".join(quantity(k) for k in effects["differ_everywhere"]) + ".")
  return lines


def _differences(result: Numbers) -> list[str]:
  """The readings whose median differs, grouped by what is known of why, with their ranges."""
  by_input = _by_input(result)
  names = list(by_input)
  separated = input_effects(result)["separated"] if len(names) > 1 else {}
  by_note: dict[str, list[str]] = {}
  straddling = []
  for r in result["rows"]:
    if r["verdict"] == "agrees":
      if r["range"] == "straddles":
        straddling.append(f"{_quantity(r)}: {spread(r)} over {_seeds(r['num_measured'])}")
      continue
    measured = f"{_quantity(r)}: {spread(r)} over {_seeds(r['num_measured'])}"
    if r["verdict"] == "differs":
      measured += f"; the median lies {_side(r)} the band, the range {r['range']} it"
    others = [f"{INPUT_TITLES.get(n, n)} {spread(by_input[n][r['key']])}" for n in names[1:]
              if r["key"] in by_input[n]]
    if others:
      measured += "; on " + ", on ".join(others)
    if r["key"] in separated:
      measured += " (the input moves it beyond the spread over seeds)"
    by_note.setdefault(r["note"] or "Not explained.", []).append(measured)
  if not by_note and not straddling:
    return []
  lines = ["", "## Where the measurement differs, and why", "",
           "Each reading whose median differs from the paper: median [min, max] over seeds on"
           " the data, where the median and the range lie against the band, and the same"
           " reading on the stand-in inputs; grouped under what is known of why.", ""]
  for note, readings in by_note.items():
    lines.append(f"- {note}")
    lines += [f"  - {reading}." for reading in readings]
  if straddling:
    lines.append("- Agree by the median, but some seeds fall outside the band, so that one"
                 " seed alone could have judged these either way:")
    lines += [f"  - {reading}." for reading in straddling]
  return lines


def _initializer_table(result: Numbers) -> list[str]:
  found = result["arms"].get("none", {}).get("initializers", {})
  if not found:
    return []
  seed = result["settings"]["first_steps_seed"]
  lines = ["", "## The no-BN network under each initialiser", "",
           f"Seed {seed}, the data batch and the measurements above; the first steps are at the"
           " no-BN F4 rate.", "",
           "| initialiser | loss at init | log10 channel std, first → last layer |"
           " max \\|∂L/∂w\\|, F3 layer | first η past 1e3 (F4) | first steps: probe loss |",
           "|---|---|---|---|---|---|"]
  for name, f in found.items():
    steps = f["first_steps"]
    outcome = (f"diverged at step {steps['diverged_step']}" if steps["diverged"] else
               f"{number(steps['probe_loss_start'])} → {number(steps['probe_loss_end'])}")
    stds = f["log10_std_L"]
    lines.append(f"| `{name}` | {number(f['loss'])} | {number(stds[0])} → {number(stds[-1])} |"
                 f" {number(f['max_abs_grad'])} |"
                 f" {number(f['first_divergent_eta'], 'none on the grid')} |"
                 f" {outcome} |")
  return lines


def _first_steps_table(result: Numbers) -> list[str]:
  lines = ["", "## F1: the first steps", "",
           f"Seed {result['settings']['first_steps_seed']}. A member that diverges is frozen,"
           " and its steps stop there.", "",
           "| norm | lr | rate of these steps | probe loss, start → end |"
           " train loss, first → last step | diverged |",
           "|---|---|---|---|---|---|"]
  for norm, arm in result["arms"].items():
    for run in arm["first_steps"]:
      losses = run["train_loss"]
      diverged = f"at step {run['diverged_step']}" if run["diverged"] else "no"
      lines.append(f"| {norm} | {run['lr']:g} | {run['rate']:g} |"
                   f" {number(run['probe_loss_start'])} →"
                   f" {number(run['probe_loss_end'])} | {number(losses[0])} →"
                   f" {number(losses[-1])} | {diverged} |")
  return lines
