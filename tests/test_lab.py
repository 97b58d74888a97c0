"""`microtile lab PLAN --out DIR`: the issue's smallest plan (two models x qemu x both
kernel sets x 2 random inputs) on QEMU, its reports, resuming, a failed cell, an
interrupted run, plan errors, and the comparison of two reports."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microtile_models.build import zoo_model_bytes

PLAN = """models: [a.tflite, b.tflite]
boards: [qemu]
kernels: [reference, optimized]
inputs: {random: 2}
"""
LAB = [sys.executable, "-m", "microtile.cli", "lab"]


def lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def write_models(where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / "a.tflite").write_bytes(zoo_model_bytes("op_fc_relu"))
    (where / "b.tflite").write_bytes(zoo_model_bytes("op_conv_3x3_same_relu"))


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    """The plan of the issue, run once for the tests of this module."""
    where = tmp_path_factory.mktemp("lab")
    write_models(where)
    (where / "plan.yaml").write_text(PLAN)
    proc = lab("plan.yaml", "--out", "out", cwd=where)
    return where, proc


@pytest.mark.qemu
def test_the_smallest_plan_runs_every_cell_with_reports_and_provenance(lab_run):
    where, proc = lab_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0] for ln in lines] == ["[1/4", "[2/4", "[3/4", "[4/4"]  # plain progress (no TTY)
    assert all("bit-exact" in ln and "instructions" in ln for ln in lines), lines
    data = json.loads((where / "out" / "report.json").read_text())
    assert data["cells_planned"] == data["cells_reported"] == 4 and data["exit_code"] == 0
    prov = data["provenance"]
    assert "arm-none-eabi-gcc" in prov["arm_none_eabi_gcc"] and "QEMU" in prov["qemu"] and prov["microtile"]
    assert set(prov["models"]) == {"a.tflite", "b.tflite"}
    cells = data["cells"]
    assert [(Path(c["cell"]["model"]).name, c["cell"]["kernels"]) for c in cells] == [
        ("a.tflite", "reference"), ("a.tflite", "optimized"), ("b.tflite", "reference"), ("b.tflite", "optimized")]
    builds = {c["result"]["provenance"]["build_id"] for c in cells}
    assert len(builds) == 4 and all(c["result"]["provenance"]["seed"] == 0 for c in cells)
    for c in cells:
        res, ana = c["result"], c["analysis"]
        assert res["verdict"] == "bit-exact" and res["samples"] == 2 and res["counter_unit"] == "instructions"
        layer = ana["layers"][0]
        # the analysis: weights and code from the ELF symbols, activations from the memory plan
        assert layer["weight_bytes"] > 0 and layer["code_bytes"] > 0 and layer["activation_bytes"] > 0
        assert layer["kernels"][0]["name"].endswith("_opt" if c["cell"]["kernels"] == "optimized" else "_ref")
        assert layer["measured"] == res["layers"][0]["instructions"] and layer["est_cycles"] > 0
        assert ana["total"]["code_bytes"] > layer["code_bytes"]  # the image has startup and link code too
    # the FC weights: 16 x 64 int8 plus int32 bias (and the optimised set's packed constants)
    assert cells[0]["analysis"]["layers"][0]["weight_bytes"] >= 16 * 64 + 16 * 4
    rows = list(csv.DictReader((where / "out" / "report.csv").open()))
    assert len(rows) == 4 and [int(r["count"]) for r in rows] == [c["result"]["total"]["instructions"] for c in cells]
    assert rows[0]["build_id"] == cells[0]["result"]["provenance"]["build_id"]
    page = (where / "out" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 6 and "http" not in page.replace("http-equiv", "")
    assert "Analysis: optimized kernels" in page and "weight ROM B" in page and "Pareto" in page


@pytest.mark.qemu
def test_rerun_keeps_finished_cells_and_a_failed_cell_does_not_stop_the_others(lab_run, tmp_path):
    where, first = lab_run
    assert first.returncode == 0
    shutil.copytree(where, tmp_path / "w")
    where = tmp_path / "w"
    before = {p.name: p.stat().st_mtime_ns for p in (where / "out" / "cells").iterdir()}
    (where / "c.tflite").write_bytes(zoo_model_bytes("op_fc_relu")[:200])  # truncated: refused at import
    (where / "plan.yaml").write_text(PLAN.replace("[a.tflite, b.tflite]", "[a.tflite, c.tflite, b.tflite]"))
    start = time.monotonic()
    proc = lab("plan.yaml", "--out", "out", cwd=where)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the worst cell: bad input
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sum("kept from an earlier run" in ln for ln in proc.stdout.splitlines() if ln.startswith("[")) == 4
    assert "2 cell(s) run, 4 kept" in proc.stdout
    assert time.monotonic() - start < 30  # nothing measured again
    after = {p.name: p.stat().st_mtime_ns for p in (where / "out" / "cells").iterdir()}
    assert all(after[k] == v for k, v in before.items())  # the finished cells were not rewritten
    data = json.loads((where / "out" / "report.json").read_text())
    failed = [c for c in data["cells"] if c["status"] == "failed"]
    assert [Path(c["cell"]["model"]).name for c in failed] == ["c.tflite", "c.tflite"]
    assert all(c["exit_code"] == 2 and c["error"] and c["result"] is None for c in failed)
    assert sum(c["status"] == "done" for c in data["cells"]) == 4
    rows = list(csv.DictReader((where / "out" / "report.csv").open()))
    assert [r["status"] for r in rows].count("failed") == 2 and all(r["error"] for r in rows if r["status"] == "failed")


@pytest.mark.qemu
def test_an_interrupted_run_keeps_what_it_measured_and_resumes(lab_run, tmp_path):
    """SIGTERM in the middle: exit 143, the cells finished before it stay on disk and in
    the report; the rerun measures only the rest."""
    where = tmp_path
    write_models(where)
    (where / "plan.yaml").write_text(PLAN.replace("{random: 2}", "{random: 2, seed: 7}")
                                     .replace("[a.tflite, b.tflite]", "[b.tflite]"))
    proc = subprocess.Popen([*LAB, "plan.yaml", "--out", "out"], cwd=where, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cells = where / "out" / "cells"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (cells.is_dir() and any(cells.glob("*.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in out + err
    kept = len(list(cells.glob("*.json")))
    assert kept == 1
    data = json.loads((where / "out" / "report.json").read_text())
    assert data["exit_code"] == 143
    # the signal lands during the second cell's build (the cell is missing) or its run
    # (the cell is reported as interrupted, and not kept on disk): either way it is run again
    statuses = [c["status"] for c in data["cells"]]
    assert statuses.count("done") == kept
    assert data["cells_missing"] + statuses.count("interrupted") == 1, (data["cells_missing"], statuses)
    again = lab("plan.yaml", "--out", "out", cwd=where)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 cell(s) run, 1 kept" in again.stdout


BAD_PLANS = [
    ("models: [a.tflite]\nkernels: [fast]\n", "plan: kernels fast: use reference or optimized"),
    ("models: [nope.tflite]\n", "plan: model nope.tflite: no such file"),
    ("models: [a.tflite]\nboards: [qemu_x]\n", "plan: "),
    ("models: [a.tflite]\ninputs: {random: 0}\n", "plan: inputs random: 0: give a count of at least 1"),
    ("models: [a.tflite]\nsettings: [{name: x, turbo: 1}]\n", "plan: setting x: unknown option(s) turbo"),
    ("models: [a.tflite]\ncolour: red\n", "unknown key(s) colour"),
    ("models: [a.tflite]\nkernels: [reference, reference]\n", "lists the same entry twice"),
    ("models: [a.tflite]\nboards: [{board: nucleo, emulate: true}]\n", "name the board to emulate"),
]


def test_a_bad_plan_is_refused_before_anything_runs(tmp_path):
    from microtile.measure.lab import PlanError, load_plan

    (tmp_path / "a.tflite").write_bytes(b"x")
    for plan, message in BAD_PLANS:
        (tmp_path / "plan.yaml").write_text(plan)
        with pytest.raises(PlanError) as info:
            load_plan(tmp_path / "plan.yaml")
        assert message in str(info.value) and "\n" not in str(info.value), (plan, str(info.value))
    # on the command line: one line, exit 2, no output folder
    (tmp_path / "plan.yaml").write_text("models: [a.tflite\n")
    proc = lab("plan.yaml", "--out", "out", cwd=tmp_path)
    text = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and len(text.splitlines()) == 1 and "not valid YAML at line" in text, text
    assert not (tmp_path / "out").exists()


@pytest.mark.qemu
def test_compare_flags_regressions(lab_run, tmp_path, capsys):
    from microtile.cli import main

    where, first = lab_run
    assert first.returncode == 0
    old = where / "out" / "report.json"
    assert main(["lab", "--compare", str(old), str(old), "--out", str(tmp_path / "same")]) == 0
    assert "0 regression(s) over 4 cell(s)" in capsys.readouterr().out
    data = json.loads(old.read_text())
    cell = data["cells"][1]  # a.tflite, optimized: 10% more instructions, and no longer bit-exact
    cell["result"]["total"]["instructions"] = int(cell["result"]["total"]["instructions"] * 1.1)
    cell["result"]["verdict"] = "mismatch"
    worse = tmp_path / "new.json"
    worse.write_text(json.dumps(data))
    assert main(["lab", "--compare", str(old), str(worse), "--out", str(tmp_path / "cmp")]) == 1
    reg = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("REGRESSION")]
    assert len(reg) == 1 and "a.tflite" in reg[0] and "optimized" in reg[0]
    assert "verdict bit-exact -> mismatch" in reg[0] and "measured count" in reg[0]
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert comparison["regressions"] == 2
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert 'class="reg"' in page and "data:image/png;base64," in page
    assert main(["lab", "--compare", str(old), str(tmp_path / "missing.json")]) == 2
    out = capsys.readouterr().out
    assert "cannot read it" in out and len(out.strip().splitlines()) == 1

def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (Debian package chromium; make setup installs it): "
                "the report cannot be checked in a browser")


def headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.qemu
def test_report_html_renders_in_headless_chromium_with_every_image_loaded(lab_run, tmp_path):
    """The page in a real browser: a screenshot that is not blank, and every <img> decoded
    (naturalWidth > 0), checked by a script in a copy of the page that writes a marker
    into the DOM Chromium dumps after the load event."""
    from PIL import Image

    browser = chromium()
    where, first = lab_run
    assert first.returncode == 0
    page = (where / "out" / "report.html").read_text()
    images = page.count("<img ")
    assert images >= 6
    shot = tmp_path / "report.png"
    proc = headless(browser, f"--screenshot={shot}", "--window-size=1200,1600", (where / "out" / "report.html").as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colours = img.getcolors(maxcolors=1 << 20) or []
    white = sum(n for n, c in colours if c == (255, 255, 255))
    assert len(colours) > 50 and white < 0.97 * img.size[0] * img.size[1], "blank screenshot"
    # the plots' colours are there: matplotlib's default blue bars (tab:blue, 31,119,180)
    assert any(abs(c[0] - 31) < 8 and abs(c[1] - 119) < 8 and abs(c[2] - 180) < 8 for _, c in colours)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var m = document.createElement('pre'); m.id = 'marker';
  m.textContent = 'IMAGES ' + ok.length + '/' + imgs.length;
  document.body.appendChild(m);
});
</script></body>"""))
    dom = headless(browser, "--dump-dom", probe.as_uri())
    assert f"IMAGES {images}/{images}" in dom.stdout, dom.stdout[-500:] + dom.stderr[-2000:]


def test_emulated_board_cells_carry_estimated_cycles_and_energy(tmp_path):
    """`{board: nucleo_l4r5zi, emulate: true}`: the board's image on the timing model, so
    the cell has estimated cycles and the estimated energy (datasheet run current), which
    the CSV and the per-layer plot show."""
    (tmp_path / "a.tflite").write_bytes(zoo_model_bytes("op_fc_relu"))
    (tmp_path / "plan.yaml").write_text("models: [a.tflite]\nboards: [{board: nucleo_l4r5zi, emulate: true}]\n"
                                        "kernels: [optimized]\ninputs: {random: 1}\n")
    proc = lab("plan.yaml", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nucleo_l4r5zi (emulated)" in proc.stdout and "est. cycles" in proc.stdout
    (row,) = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert row["emulate"] == "True" and int(row["est_cycles"]) > 0
    assert float(row["energy_uj"]) > 0 and row["energy_kind"] == "estimated"
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"{float(row['energy_uj']):.3f} (estimated)" in page  # the cells table
    cell = json.loads((tmp_path / "out" / "report.json").read_text())["cells"][0]
    assert cell["result"]["total"]["est_energy_uj"] == pytest.approx(float(row["energy_uj"]))


def test_settings_take_an_approx_file_and_it_is_part_of_the_cell_key(tmp_path):
    from microtile.measure.lab import PlanError, load_plan

    (tmp_path / "a.tflite").write_bytes(b"x")
    (tmp_path / "chosen.json").write_text('{"chosen": {"layers": []}}')
    (tmp_path / "plan.yaml").write_text("models: [a.tflite]\nsettings: [{name: exact}, {name: pruned, "
                                        "approx: chosen.json}]\n")
    exact, pruned = load_plan(tmp_path / "plan.yaml").cells()
    assert exact.setting == "exact" and dict(pruned.options)["approx"] == str(tmp_path / "chosen.json")
    key = pruned.key()
    (tmp_path / "chosen.json").write_text('{"chosen": {"layers": [{"index": 0}]}}')
    assert pruned.key() != key != exact.key()  # another approx file: measured again
    (tmp_path / "plan.yaml").write_text("models: [a.tflite]\nsettings: [{name: p, approx: nope.json}]\n")
    with pytest.raises(PlanError, match="approx nope.json: no such file"):
        load_plan(tmp_path / "plan.yaml")


def test_memory_settings_reach_the_compiler(tmp_path):
    """A setting's ram_budget is the run's --ram-budget: one below every configuration fails
    that cell with the RAM search's message (exit 2), before any build; the other setting's
    cell is refused at plan time when its budget is not a byte count."""
    write_models(tmp_path)
    (tmp_path / "plan.yaml").write_text("models: [b.tflite]\nboards: [qemu]\nkernels: [optimized]\n"
                                        "inputs: {random: 2}\nsettings: [{name: tiny, ram_budget: 1}]\n")
    proc = lab("plan.yaml", "--out", "out", cwd=tmp_path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (cell,) = report["cells"]
    assert cell["status"] == "failed" and cell["exit_code"] == 2, cell
    assert "RAM budget of 1 B" in cell["error"], cell["error"]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (tmp_path / "plan.yaml").write_text("models: [b.tflite]\nboards: [qemu]\nkernels: [optimized]\n"
                                        "inputs: {random: 2}\nsettings: [{name: bad, flash_budget: -4}]\n")
    proc = lab("plan.yaml", "--out", "out2", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "flash_budget -4: give a positive number of bytes" in out, out
