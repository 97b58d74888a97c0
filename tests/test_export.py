"""`microtile export`: the folder a user drops into their own firmware. A user's CMake
project of a few lines, outside the repository, adds it with add_subdirectory and runs
the KWS models on the host (gcc) and on Cortex-M4 (arm-none-eabi-gcc, QEMU
netduinoplus2, results printed through semihosting), bit-exact with TFLM."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from microtile.targets.boards import load_board
from microtile.codegen.model_source import compile_model
from microtile.codegen.export import default_name, export_model, used_files
from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.check.oracle import TflmOracle
from microtile.ops.quantize import dequantize_array, quantize_array
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile_models.build import zoo_model_bytes

REPO = Path(__file__).resolve().parents[1]
MLPERF_KWS = Path(os.environ.get("MICROTILE_SHARED", REPO.parent / "shared")) / "models" / "mlperf_tiny" / \
    "kws_ref_model.tflite"
N_INPUTS = 3

# The user's whole build: add the folder, link the target.
USER_CMAKE = """cmake_minimum_required(VERSION 3.13)
project(user_app C)
add_subdirectory({lib} kws)
add_executable(app main.c {extra})
target_link_libraries(app PRIVATE microtile::kws)
{link}
"""

# Host main: input file -> output file, counting the layer hook's calls; "quant" mode
# runs the float helpers on a file of floats.
HOST_MAIN = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kws.h"

static uint8_t arena[KWS_ARENA_BYTES] __attribute__((aligned(KWS_ARENA_ALIGN)));
static unsigned calls[2];
static void hook(uint32_t layer, int end, void *user) { (void)layer; (void)user; calls[end != 0]++; }

static size_t slurp(const char *path, void *buf, size_t n) {
    FILE *f = fopen(path, "rb"); size_t got = fread(buf, 1, n, f); fclose(f); return got;
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "quant") == 0) {
        static float x[4096], back[4096]; static int8_t q[4096];
        uint32_t n = (uint32_t)(slurp(argv[2], x, sizeof x) / sizeof(float));
        kws_quantize(x, q, n, strtof(argv[4], NULL), atoi(argv[5]));
        kws_dequantize(q, back, n, strtof(argv[4], NULL), atoi(argv[5]));
        FILE *f = fopen(argv[3], "wb"); fwrite(q, 1, n, f); fwrite(back, sizeof(float), n, f); fclose(f);
        return 0;
    }
    static int8_t in[KWS_INPUT0_BYTES], out[KWS_OUTPUT0_BYTES];
    if (argc == 4 && strcmp(argv[1], "float") == 0) { /* a float model: the helpers at both ends */
        static float x[KWS_INPUT0_ELEMENTS], y[KWS_OUTPUT0_ELEMENTS];
        if (slurp(argv[2], x, sizeof x) != sizeof x) return 10;
        kws_quantize(x, in, KWS_INPUT0_ELEMENTS, KWS_INPUT0_SCALE, KWS_INPUT0_ZERO_POINT);
        const void *inputs[KWS_NUM_INPUTS] = {in};
        void *outputs[KWS_NUM_OUTPUTS] = {out};
        int rc = kws_invoke(arena, inputs, outputs);
        kws_dequantize(out, y, KWS_OUTPUT0_ELEMENTS, KWS_OUTPUT0_SCALE, KWS_OUTPUT0_ZERO_POINT);
        FILE *f = fopen(argv[3], "wb"); fwrite(y, sizeof(float), KWS_OUTPUT0_ELEMENTS, f); fclose(f);
        return rc;
    }
    if (slurp(argv[1], in, sizeof in) != sizeof in) return 10;
    const void *inputs[KWS_NUM_INPUTS] = {in};
    void *outputs[KWS_NUM_OUTPUTS] = {out};
    kws_set_layer_hook(hook, NULL);
    int rc = kws_invoke(arena, inputs, outputs);
    unsigned before = calls[0], after = calls[1];
    int misaligned = kws_invoke(arena + 1, inputs, outputs);
    memset(out, 0, sizeof out);
    int null_arena = kws_invoke(NULL, inputs, outputs); /* the static arena, when built with it */
    if (null_arena != 0) rc |= kws_invoke(arena, inputs, outputs);
    FILE *f = fopen(argv[2], "wb"); fwrite(out, 1, sizeof out, f); fclose(f);
    printf("rc %d hook %u %u misaligned %d null %d\n", rc, before, after, misaligned, null_arena);
    return rc;
}
"""

# Cortex-M4 main: a vector table and reset handler of its own (no microtile port code),
# the inputs compiled in, outputs printed as hex through semihosting (SYS_WRITE0), then
# SYS_EXIT. The library itself does no I/O.
DEVICE_MAIN = r"""#include <stdint.h>
#include <string.h>
#include "kws.h"
#include "inputs.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
static int semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op; register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
void reset_handler(void) {
    memcpy(&_sdata, &_sidata, (size_t)((char *)&_edata - (char *)&_sdata));
    memset(&_sbss, 0, (size_t)((char *)&_ebss - (char *)&_sbss));
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* FPU on: the float helpers */
    __asm__ volatile("dsb\n isb");
    main();
    semihost(0x18, (const void *)0x20026u); /* SYS_EXIT, ADP_Stopped_ApplicationExit: QEMU exits 0 */
    for (;;) {}
}
__attribute__((section(".vectors"), used)) static const void *const vectors[2] = {&_estack, (void *)reset_handler};

static uint8_t arena[KWS_ARENA_BYTES] __attribute__((aligned(KWS_ARENA_ALIGN)));
static char line[2 * KWS_OUTPUT0_BYTES + 16];
int main(void) {
    static int8_t out[KWS_OUTPUT0_BYTES];
    for (unsigned s = 0; s < N_SAMPLES; s++) {
        const void *inputs[KWS_NUM_INPUTS] = {samples[s]};
        void *outputs[KWS_NUM_OUTPUTS] = {out};
        int rc = kws_invoke(arena, inputs, outputs);
        char *p = line;
        *p++ = rc == 0 ? 'Y' : 'N'; *p++ = ' ';
        for (unsigned i = 0; i < sizeof out; i++) {
            *p++ = "0123456789abcdef"[(uint8_t)out[i] >> 4]; *p++ = "0123456789abcdef"[out[i] & 15];
        }
        *p++ = '\n'; *p = 0;
        semihost(0x04, line);
    }
    return 0;
}
"""

DEVICE_LD = """MEMORY { FLASH (rx) : ORIGIN = 0x08000000, LENGTH = 1024K
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 128K }
ENTRY(reset_handler)
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); } > FLASH
  .data : { _sdata = .; *(.data*) . = ALIGN(4); _edata = .; } > RAM AT > FLASH
  _sidata = LOADADDR(.data);
  .bss (NOLOAD) : { _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; } > RAM
  _estack = ORIGIN(RAM) + LENGTH(RAM);
}
"""


def _models():
    yield pytest.param("ds_cnn_kws", id="zoo_ds_cnn_kws")
    yield pytest.param("mlperf_kws", id="mlperf_kws", marks=pytest.mark.shared)


def _export(which: str, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(which)
    if which == "mlperf_kws":
        if not MLPERF_KWS.is_file():
            pytest.skip(f"MLPerf Tiny KWS model not at {MLPERF_KWS} (set MICROTILE_SHARED)")
        model = MLPERF_KWS
    else:
        model = tmp / "ds_cnn_kws.tflite"
        model.write_bytes(zoo_model_bytes("ds_cnn_kws"))
    board = load_board("qemu")
    compiled = compile_model(load_tflite(model), "optimized", board)
    out = tmp / "export" / "kws"
    export_model(compiled, out, "kws", board)
    return model, out, compiled


@pytest.fixture(scope="module", params=list(_models()))
def exported(request, tmp_path_factory):
    """(model path, export folder, compiled model) for each KWS model, exported as `kws`."""
    return _export(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def zoo_exported(tmp_path_factory):
    """The DS-CNN zoo model only: for what is the same C for every model."""
    return _export("ds_cnn_kws", tmp_path_factory)


def _inputs(compiled, n=N_INPUTS) -> list[np.ndarray]:
    t = compiled.graph.tensor(compiled.device_inputs[0])
    rng = np.random.default_rng(12)
    return [rng.integers(-128, 128, size=t.shape, dtype=np.int8) for _ in range(n)]


def _cmake_build(src: Path, build: Path, *extra: str) -> None:
    for cmd in (["cmake", "-G", "Ninja", "-S", str(src), "-B", str(build), *extra],
                ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_folder_holds_exactly_the_kernels_the_model_uses(exported):
    _, out, compiled = exported
    headers, sources = used_files(compiled)
    assert sorted(p.name for p in (out / "src").glob("mt_*.c")) == [p.name for p in sources]
    assert {p.name for p in (out / "include").glob("mt_*.h")} == {p.name for p in headers}
    every_kernel = sorted((REPO / "firmware" / "kernels").glob("*.c"))
    assert 0 < len(sources) < len(every_kernel)  # not the whole kernel set copied
    header = (out / "include" / "kws.h").read_text()
    t = compiled.graph.tensor(compiled.device_inputs[0])
    assert f"#define KWS_INPUT0_BYTES {t.nbytes}u" in header
    assert f"#define KWS_INPUT0_ZERO_POINT {t.zero_point}" in header
    assert np.float32(float(header.split("#define KWS_INPUT0_SCALE ")[1].split("f\n")[0])) == np.float32(t.scale)
    assert f"#define KWS_ARENA_BYTES {compiled.plan.arena_size}u" in header
    assert "int kws_invoke(void *arena, const void *const *inputs, void *const *outputs);" in header
    report = json.loads((out / "report.json").read_text())
    assert report["rom"]["weights_bytes"] >= compiled.const_bytes > 0
    assert report["rom"]["code_bytes"] > 1000
    assert report["ram"]["arena_bytes"] == compiled.plan.arena_size
    assert 64 < report["ram"]["stack_bytes"] < 8192
    assert sum(layer["weight_bytes"] for layer in report["layers"]) == report["rom"]["weights_bytes"]
    assert len(report["layers"]) == len(compiled.device_ops)
    assert max(layer["stack_bytes"] for layer in report["layers"]) == report["ram"]["stack_bytes"]
    assert all(0 < layer["stack_bytes"] for layer in report["layers"])


def test_user_cmake_project_on_host_bit_exact_with_tflm(exported, tmp_path):
    model, out, compiled = exported
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "CMakeLists.txt").write_text(USER_CMAKE.format(lib=out, extra="", link=""))
    (tmp_path / "app" / "main.c").write_text(HOST_MAIN)
    _cmake_build(tmp_path / "app", tmp_path / "build", "-DCMAKE_C_COMPILER=gcc",
                 "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror -fsanitize=undefined -fno-sanitize-recover=all")
    exe = tmp_path / "build" / "app"
    oracle = TflmOracle(model)
    for k, x in enumerate(_inputs(compiled)):
        (tmp_path / f"in{k}.bin").write_bytes(x.tobytes())
        proc = subprocess.run([str(exe), str(tmp_path / f"in{k}.bin"), str(tmp_path / f"out{k}.bin")],
                              capture_output=True, text=True, timeout=60)
        layers = len(compiled.device_ops)
        assert proc.returncode == 0 and proc.stdout.split() == ["rc", "0", "hook", str(layers), str(layers),
                                                                "misaligned", "2", "null", "1"], \
            proc.stdout + proc.stderr
        want = oracle([x])[0]
        got = np.frombuffer((tmp_path / f"out{k}.bin").read_bytes(), dtype=want.dtype).reshape(want.shape)
        np.testing.assert_array_equal(got, want)


def test_user_cmake_project_on_cortex_m4_qemu_bit_exact_with_tflm(exported, tmp_path):
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run make setup")
    model, out, compiled = exported
    xs = _inputs(compiled)
    app = tmp_path / "app"
    app.mkdir()
    rows = ",\n".join("{" + ", ".join(map(str, x.reshape(-1).tolist())) + "}" for x in xs)
    (app / "inputs.h").write_text(f"#define N_SAMPLES {len(xs)}u\n"
                                  f"static const int8_t samples[N_SAMPLES][KWS_INPUT0_BYTES] = {{{rows}}};\n")
    (app / "main.c").write_text(DEVICE_MAIN)
    (app / "app.ld").write_text(DEVICE_LD)
    link = 'target_link_options(app PRIVATE "-T${CMAKE_CURRENT_SOURCE_DIR}/app.ld")'
    (app / "CMakeLists.txt").write_text(USER_CMAKE.format(lib=out, extra="", link=link))
    _cmake_build(app, tmp_path / "build", f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'firmware/cmake/arm-none-eabi.cmake'}",
                 f"-DMT_CPU_FLAGS={' '.join(load_board('qemu').cpu_flags)}")
    proc = subprocess.run(["qemu-system-arm", "-M", "netduinoplus2", "-display", "none", "-monitor", "none",
                           "-serial", "null", "-semihosting-config", "enable=on,target=native",
                           "-kernel", str(tmp_path / "build" / "app")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = (proc.stdout + proc.stderr).split("\n")  # QEMU writes SYS_WRITE0 text to stderr
    oracle = TflmOracle(model)
    assert len([line for line in lines if line.startswith(("Y ", "N "))]) == len(xs), proc.stdout
    for line, x in zip((line for line in lines if line.startswith(("Y ", "N "))), xs):
        assert line.startswith("Y ")
        want = oracle([x])[0]
        got = np.frombuffer(bytes.fromhex(line[2:]), dtype=want.dtype).reshape(want.shape)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scale,zp", [(0.1, 3), (0.0078125, -128), (0.37, 127)])
def test_c_quantise_helpers_bit_exact_with_the_host(zoo_exported, tmp_path, scale, zp):
    _, out, _ = zoo_exported
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(USER_CMAKE.format(lib=out, extra="", link=""))
    (app / "main.c").write_text(HOST_MAIN)
    _cmake_build(app, tmp_path / "build", "-DCMAKE_C_COMPILER=gcc")
    s = float(np.float32(scale))
    ties = (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * np.float32(s)  # x / s near .5
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
                        np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-30], np.float32),
                        np.random.default_rng(3).normal(0, 20, 500).astype(np.float32)]).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(tmp_path / "build" / "app"), "quant", str(tmp_path / "x.bin"), str(tmp_path / "q.bin"),
                           repr(s), str(zp)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    raw = (tmp_path / "q.bin").read_bytes()
    q = np.frombuffer(raw[:x.size], np.int8)
    with np.errstate(over="ignore", invalid="ignore"):  # 3e38 / scale overflows, as in C
        np.testing.assert_array_equal(q, quantize_array(x, s, zp))
    np.testing.assert_array_equal(np.frombuffer(raw[x.size:], np.float32), dequantize_array(q, s, zp))


def test_float_model_through_the_c_helpers_bit_exact_with_tflm(tmp_path):
    """A float-in, float-out model: the caller quantises with KWS_INPUT0_SCALE/_ZERO_POINT,
    invokes, dequantises, and gets TFLM's float outputs bit for bit."""
    model = tmp_path / "ds_cnn_kws_float.tflite"
    model.write_bytes(zoo_model_bytes("ds_cnn_kws", float_io=True))
    board = load_board("qemu")
    compiled = compile_model(load_tflite(model), "optimized", board)
    assert compiled.graph.tensor(compiled.graph.inputs[0]).dtype == "float32"
    export_model(compiled, tmp_path / "kws", "kws", board)
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(USER_CMAKE.format(lib=tmp_path / "kws", extra="", link=""))
    (app / "main.c").write_text(HOST_MAIN)
    _cmake_build(app, tmp_path / "build", "-DCMAKE_C_COMPILER=gcc")
    oracle = TflmOracle(model)
    shape = compiled.graph.tensor(compiled.graph.inputs[0]).shape
    for k, x in enumerate(np.random.default_rng(5).normal(0, 3, size=(2, *shape)).astype(np.float32)):
        (tmp_path / f"x{k}.bin").write_bytes(x.tobytes())
        proc = subprocess.run([str(tmp_path / "build" / "app"), "float", str(tmp_path / f"x{k}.bin"),
                               str(tmp_path / f"y{k}.bin")], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        want = oracle([x])[0]
        assert want.dtype == np.float32
        got = np.frombuffer((tmp_path / f"y{k}.bin").read_bytes(), np.float32).reshape(want.shape)
        assert got.tobytes() == want.tobytes()


def test_static_arena_option_lets_invoke_take_null(zoo_exported, tmp_path):
    model, out, compiled = zoo_exported
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(USER_CMAKE.format(lib=out, extra="", link=""))
    (app / "main.c").write_text(HOST_MAIN)
    _cmake_build(app, tmp_path / "build", "-DCMAKE_C_COMPILER=gcc", "-Dkws_STATIC_ARENA=ON")
    x = _inputs(compiled, 1)[0]
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(tmp_path / "build" / "app"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["null", "0"], proc.stdout
    want = TflmOracle(model)([x])[0]  # out.bin holds what the NULL-arena call wrote
    np.testing.assert_array_equal(np.frombuffer((tmp_path / "out.bin").read_bytes(), want.dtype).reshape(want.shape),
                                  want)


def test_export_again_leaves_exactly_the_new_models_kernels(tmp_path):
    board = load_board("qemu")
    big = compile_model(load_tflite(zoo_model_bytes("ds_cnn_kws")), "optimized", board)
    small = compile_model(load_tflite(zoo_model_bytes("op_conv_3x3_same_relu")), "optimized", board)
    from microtile.codegen.export import write_export

    write_export(big, tmp_path / "m", "m")
    write_export(small, tmp_path / "m", "m")
    assert sorted(p.name for p in (tmp_path / "m" / "src").glob("mt_*.c")) == [p.name for p in used_files(small)[1]]
    assert len(used_files(small)[1]) < len(used_files(big)[1])


def test_makefile_fragment_builds_the_same_library(zoo_exported, tmp_path):
    model, out, compiled = zoo_exported
    (tmp_path / "main.c").write_text(HOST_MAIN)
    (tmp_path / "Makefile").write_text(f"include {out}/kws.mk\napp: main.c $(KWS_SRCS)\n"
                                       "\tgcc $(KWS_CFLAGS) -O2 -Wall -Werror -o $@ $^\n")
    proc = subprocess.run(["make", "-C", str(tmp_path), "app"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    x = _inputs(compiled, 1)[0]
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(tmp_path / "app"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout
    want = TflmOracle(model)([x])[0]
    np.testing.assert_array_equal(np.frombuffer((tmp_path / "out.bin").read_bytes(), want.dtype).reshape(want.shape),
                                  want)


def test_zephyr_module_form_names_the_same_sources(zoo_exported):
    import yaml

    _, out, _ = zoo_exported
    module = yaml.safe_load((out / "zephyr" / "module.yml").read_text())
    assert module["build"] == {"cmake": "zephyr", "kconfig": "zephyr/Kconfig"}
    zephyr_cmake = (out / "zephyr" / "CMakeLists.txt").read_text()
    listed = sorted(line.split("/../src/")[1].rstrip(")") for line in zephyr_cmake.splitlines() if "/../src/" in line)
    assert listed == sorted(p.name for p in (out / "src").glob("*.c"))
    assert "config MICROTILE_MODEL_KWS\n" in (out / "zephyr" / "Kconfig").read_text()
    assert "if(CONFIG_MICROTILE_MODEL_KWS)" in zephyr_cmake


def test_firmware_builds_the_exported_folder(tmp_path, monkeypatch):
    """One path: microtile's own firmware build compiles the export folder (the same
    files `microtile export` writes), not a copy of the kernels."""
    import microtile.build.firmware as build
    from microtile.codegen.export import export_files

    monkeypatch.setattr(build, "BUILD_ROOT", tmp_path)
    graph = load_tflite(zoo_model_bytes("op_conv_3x3_same_relu"))
    board = load_board("qemu")
    compiled = compile_model(graph, "optimized", board)
    fw = build.build_firmware(compiled, board)
    model_dir = fw.elf.parent / "model"
    for rel, text in export_files(compiled, build.FIRMWARE_LIBRARY).items():
        assert (model_dir / rel).read_text() == text, rel
    # The kernels the firmware compiled are the export folder's, and only those.
    ninja = (fw.elf.parent / "build.ninja").read_text()
    assert "/model/src/model.c" in ninja and "/model/src/mt_matmul_opt.c" in ninja
    assert "firmware/kernels/" not in ninja


def test_per_layer_counts_unchanged_by_building_the_export(tmp_path, monkeypatch):
    """The firmware built from the export folder counts every layer exactly as the one
    built the old way (model.c beside all the kernels, compiled into the executable)."""
    import microtile.build.firmware as build
    from microtile.targets.boards import firmware_configure_command
    from microtile.targets.qemu import QemuTarget

    monkeypatch.setattr(build, "BUILD_ROOT", tmp_path / "cache")
    board = load_board("qemu")
    compiled = compile_model(load_tflite(zoo_model_bytes("ds_cnn_kws")), "optimized", board)
    exported_elf = build.build_firmware(compiled, board).elf
    plain = compiled.write(tmp_path / "plain")  # model.c + model.h only: every kernel, as before
    for cmd in (firmware_configure_command(board, plain, "0", tmp_path / "old"),
                ["cmake", "--build", str(tmp_path / "old")]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    x = _inputs(compiled, 1)[0].tobytes()
    counts = []
    for elf in (exported_elf, tmp_path / "old" / "microtile.elf"):
        with QemuTarget("qemu", elf, timeout=20.0) as t:
            t.link.write_input(0, x)
            t.link.invoke(1)
            counts.append((t.link.read_counters().layers, t.link.read_output(0)))
    assert counts[0] == counts[1] and all(c > 0 for c in counts[0][0])


def _dense(n_in: int, n_out: int) -> Graph:
    q = Quant(np.array([0.05], np.float32), np.array([0], np.int64))
    w = np.ones((n_out, n_in), np.int8)
    return Graph("dense", [Tensor(0, "x", (1, n_in), "int8", q),
                           Tensor(1, "w", (n_out, n_in), "int8", Quant(np.array([0.01], np.float32),
                                                                         np.array([0], np.int64)), w),
                           Tensor(2, "y", (1, n_out), "int8", q)],
                 [Operator(0, "FULLY_CONNECTED", [0, 1, -1], [2], {"fused_activation_function": "NONE"})], [0], [2])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microtile.cli", "export", *args], capture_output=True, text=True,
                          timeout=120)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    model = tmp_path / "op model-1.tflite"
    model.write_bytes(zoo_model_bytes("op_conv_3x3_same_relu"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    big = tmp_path / "big.tflite"
    big.write_bytes(write_tflite(_dense(1024, 1100)))  # 1.1 MB of weights
    cases = [([str(model), "--out", str(blocker / "x")], "cannot write the export folder"),
             ([str(model), "--out", str(tmp_path / "o"), "--name", "my-model"], "not usable as a C library name"),
             ([str(model), "--out", str(tmp_path / "o"), "--name", "int"], "not usable as a C library name"),
             ([str(big), "--out", str(tmp_path / "o")], "flash")]
    for args, what in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert what in proc.stdout and len(proc.stdout.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, \
            proc.stdout
    assert not (tmp_path / "o").exists()
    assert default_name(model) == "op_model_1"
    assert [default_name(f"{n}.tflite") for n in ("model", "MT_net", "3x", "int")] == ["m_model", "m_mt_net", "m_3x",
                                                                                    "m_int"]
