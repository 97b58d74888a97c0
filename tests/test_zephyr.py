"""The Zephyr build, checked with everything that runs without a Zephyr tree: west's own
manifest parser on west.yml (and a real `west init -l` workspace), the module's
metadata, the C sources the module compiles against the ones the bare-metal build
compiles (evaluated by CMake itself), the port against mt_port.h, Kconfig and
prj.conf against each other, the trigger overlays against the board YAMLs, and the
`west build` command line and its error paths. With ZEPHYR_BASE set, the app is
built for real."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from microtile.build import zephyr
from microtile.targets.boards import BoardError, load_board
from microtile.codegen.model_source import compile_model
from microtile.errors import ToolMissingError
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes

REPO = Path(__file__).resolve().parents[1]
WEST_YML = REPO / "west.yml"
MODULE = REPO / "zephyr"
FIRMWARE = REPO / "firmware"
NUCLEO_ZEPHYR_BOARDS = {"nucleo_f401re", "nucleo_f411re", "nucleo_f446re", "nucleo_f429zi",
                        "nucleo_l4r5zi", "nucleo_h743zi"}


# ---- west.yml, through west's manifest parser ----

def _manifest(**kwargs):
    from west.manifest import Manifest

    return Manifest.from_data(WEST_YML.read_text(), **kwargs)


def test_west_manifest_pins_zephyr_only():
    from west.manifest import ImportFlag, ManifestProject

    m = _manifest(import_flags=ImportFlag.IGNORE)
    assert isinstance(m.projects[0], ManifestProject)
    assert m.projects[0].path == "microtile"
    projects = m.projects[1:]
    assert [p.name for p in projects] == ["zephyr"]
    zephyr_project = projects[0]
    assert zephyr_project.url == "https://github.com/zephyrproject-rtos/zephyr"
    # pinned: a release tag or a full commit SHA, never a branch
    assert re.fullmatch(r"v\d+\.\d+\.\d+|[0-9a-f]{40}", zephyr_project.revision), zephyr_project.revision
    assert zephyr_project.path == "zephyr"


def test_west_manifest_imports_only_the_stm32_modules():
    data = yaml.safe_load(WEST_YML.read_text())
    (zephyr_entry,) = [p for p in data["manifest"]["projects"] if p["name"] == "zephyr"]
    allow = zephyr_entry["import"]["name-allowlist"]
    # Zephyr >= 4.2 builds Cortex-M against cmsis_6; hal_stm32 still includes cmsis 5 headers.
    assert sorted(allow) == ["cmsis", "cmsis_6", "hal_stm32"]


def test_west_resolves_the_import_to_the_allowlist():
    """west's import resolution (name-allowlist applied by west itself) on a stand-in
    for zephyr's own west.yml, which cannot be fetched here."""
    upstream = {"manifest": {
        "defaults": {"remote": "upstream"},
        "remotes": [{"name": "upstream", "url-base": "https://github.com/zephyrproject-rtos"}],
        "projects": [
            {"name": name, "revision": f"{i:040x}", "path": f"modules/{name}"}
            for i, name in enumerate(["cmsis", "cmsis_6", "cmsis-nn", "hal_nordic", "hal_stm32", "lvgl",
                                      "mbedtls", "picolibc"], start=1)
        ],
        "self": {"path": "zephyr"},
    }}
    calls = []

    def importer(project, path):
        calls.append((project.name, project.revision, path))
        return yaml.safe_dump(upstream)

    m = _manifest(importer=importer)
    assert [(name, path) for name, _, path in calls] == [("zephyr", "west.yml")]
    names = {p.name: p for p in m.projects[1:]}
    assert set(names) == {"zephyr", "cmsis", "cmsis_6", "hal_stm32"}
    assert names["hal_stm32"].path == "modules/hal_stm32"


def test_real_west_workspace_from_the_manifest(tmp_path):
    """`west init -l` (offline) on a copy of the manifest repo: west accepts the
    manifest, find_workspace() finds the topdir, and before `west update` the build
    says what to run."""
    west = zephyr.find_west()
    manifest_repo = tmp_path / "microtile"
    manifest_repo.mkdir()
    shutil.copy(WEST_YML, manifest_repo / "west.yml")
    proc = subprocess.run([west, "init", "-l", str(manifest_repo)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / ".west" / "config").is_file()
    assert zephyr.find_workspace(tmp_path / "microtile") == tmp_path

    from west.manifest import ImportFlag, Manifest

    m = Manifest.from_topdir(topdir=tmp_path, import_flags=ImportFlag.IGNORE)
    assert [p.name for p in m.projects] == ["manifest", "zephyr"]
    assert Path(m.projects[1].abspath) == tmp_path / "zephyr"
    assert not m.projects[1].is_cloned()

    with pytest.raises(ToolMissingError, match="west update"):
        zephyr.find_zephyr_base({"ZEPHYR_BASE": str(tmp_path / "zephyr")})


def test_workspace_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ToolMissingError, match="not inside a west workspace"):
        zephyr.find_workspace(tmp_path)


# ---- module metadata ----

# The keys zephyr/scripts/zephyr_module.py knows for build:, as a pykwalify schema
# (pykwalify is what that script validates with). Extra or mistyped keys fail.
MODULE_SCHEMA = {
    "type": "map",
    "mapping": {
        "name": {"type": "str", "required": True},
        "build": {"type": "map", "required": True, "mapping": {
            "cmake": {"type": "str", "required": True},
            "kconfig": {"type": "str", "required": True},
            "depends": {"type": "seq", "sequence": [{"type": "str"}]},
        }},
    },
}


def test_module_yml_is_valid_and_points_at_real_files():
    import pykwalify.core

    meta = yaml.safe_load((MODULE / "module.yml").read_text())
    pykwalify.core.Core(source_data=meta, schema_data=MODULE_SCHEMA).validate(raise_exception=True)
    assert meta["name"] == "microtile"
    # what zephyr_module.py requires: cmake names a folder with a CMakeLists.txt,
    # kconfig a file, both relative to the module root
    assert (REPO / meta["build"]["cmake"] / "CMakeLists.txt").is_file()
    assert (REPO / meta["build"]["kconfig"]).is_file()


@pytest.mark.skipif(not os.environ.get("ZEPHYR_BASE"), reason="ZEPHYR_BASE not set: zephyr_module.py not available")
def test_module_accepted_by_zephyrs_own_module_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "zephyr_module", Path(os.environ["ZEPHYR_BASE"]) / "scripts" / "zephyr_module.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    meta = mod.process_module(str(REPO))
    assert meta["name"] == "microtile"
    assert "microtile" in mod.process_cmake(str(REPO), meta)


# ---- the C sources: the module compiles what the bare-metal build compiles ----

def _cmake_eval_zephyr_module(tmp_path: Path, model_dir: Path) -> dict:
    """Evaluate what firmware/zephyr_app/CMakeLists.txt does before and after
    find_package(Zephyr) with CMake in script mode: model_library.cmake on MT_MODEL_DIR,
    then the CMakeLists.txt of every module it adds (the export's zephyr/) and of
    zephyr/, with the Kconfig symbol it turned on. The zephyr_* commands come from
    Zephyr's build system, which is not here; these record their arguments."""
    script = tmp_path / "eval_module.cmake"
    out = tmp_path / "module.json"
    script.write_text(f"""
set(CONFIG_MICROTILE y)
set(CONFIG_MICROTILE_APP y)
set(MT_MODEL_DIR "{model_dir}")
set(MT_BUILD_ID 1a2b)
set(BOARD nucleo_f446re)
set(MT_LIBRARIES "")
set(MT_SOURCES "")
set(MT_GLOBAL_INCLUDES "")
set(MT_LIB_INCLUDES "")
set(MT_DEFINES "")
set(ZEPHYR_EXTRA_MODULES "")
set(EXTRA_CONF_FILE "")
macro(zephyr_library)
  list(APPEND MT_LIBRARIES microtile)
endmacro()
macro(zephyr_library_named name)
  list(APPEND MT_LIBRARIES ${{name}})
endmacro()
macro(zephyr_library_sources)
  list(APPEND MT_SOURCES ${{ARGN}})
endmacro()
macro(zephyr_include_directories)
  list(APPEND MT_GLOBAL_INCLUDES ${{ARGN}})
endmacro()
macro(zephyr_library_include_directories)
  list(APPEND MT_LIB_INCLUDES ${{ARGN}})
endmacro()
macro(zephyr_library_compile_definitions)
  list(APPEND MT_DEFINES ${{ARGN}})
endmacro()
include("{zephyr.APP_DIR / 'model_library.cmake'}")
file(READ "${{EXTRA_CONF_FILE}}" conf)
string(STRIP "${{conf}}" conf)
set(CONFIG_${{MT_MODEL_KCONFIG}} y)
foreach(module IN LISTS ZEPHYR_EXTRA_MODULES)
  include("${{module}}/zephyr/CMakeLists.txt")
endforeach()
include("{MODULE / 'CMakeLists.txt'}")
string(REPLACE ";" "\\",\\"" m "${{ZEPHYR_EXTRA_MODULES}}")
string(REPLACE ";" "\\",\\"" n "${{MT_LIBRARIES}}")
string(REPLACE ";" "\\",\\"" s "${{MT_SOURCES}}")
string(REPLACE ";" "\\",\\"" g "${{MT_GLOBAL_INCLUDES}}")
string(REPLACE ";" "\\",\\"" l "${{MT_LIB_INCLUDES}}")
string(REPLACE "\\"" "\\\\\\"" d "${{MT_DEFINES}}")
string(REPLACE ";" "|" d "${{d}}")
file(WRITE "{out}" "{{\\"extra_modules\\": [\\"${{m}}\\"], \\"conf\\": \\"${{conf}}\\", \\"libraries\\": [\\"${{n}}\\"], \\"sources\\": [\\"${{s}}\\"], \\"global_includes\\": [\\"${{g}}\\"], \\"lib_includes\\": [\\"${{l}}\\"], \\"defines\\": \\"${{d}}\\"}}")
""")
    proc = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def _bare_metal_compiled_sources(tmp_path: Path, model_dir: Path) -> tuple[set[Path], Path]:
    """Configure the bare-metal firmware (no compile) and read what it would compile."""
    from microtile.targets.boards import firmware_configure_command

    build = tmp_path / "bare"
    cmd = firmware_configure_command(load_board("netduinoplus2"), model_dir, "1a2b", build)
    proc = subprocess.run(cmd + ["-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entries = json.loads((build / "compile_commands.json").read_text())
    return {Path(e["file"]).resolve() for e in entries}, build


@pytest.fixture()
def model_dir(tmp_path, small_model) -> Path:
    """The folder `microtile export` writes, as build_zephyr and build.py write it."""
    from microtile.build.firmware import FIRMWARE_LIBRARY
    from microtile.codegen.export import write_export

    d = tmp_path / "model"
    write_export(small_model, d, FIRMWARE_LIBRARY)
    return d


def test_module_compiles_the_same_sources_as_bare_metal(tmp_path, model_dir):
    """The app builds the exported folder through its Zephyr module, and the result is
    what the bare-metal build compiles from the same folder, port aside."""
    module = _cmake_eval_zephyr_module(tmp_path, model_dir)
    assert module["extra_modules"] == [str(model_dir.resolve())]
    assert module["conf"] == "CONFIG_MICROTILE_MODEL_MICROTILE_MODEL=y"
    assert "config MICROTILE_MODEL_MICROTILE_MODEL" in (model_dir / "zephyr" / "Kconfig").read_text()
    assert sorted(module["libraries"]) == ["microtile", "microtile_model"]
    module_sources = [Path(s).resolve() for s in module["sources"]]
    assert len(module_sources) == len(set(module_sources)), "a source listed twice"
    for s in module_sources:
        assert s.is_file(), f"a zephyr/CMakeLists.txt names {s}, which does not exist"
    zephyr_port = {s for s in module_sources if s.parent == FIRMWARE / "ports" / "zephyr"}
    assert zephyr_port == {FIRMWARE / "ports" / "zephyr" / "mt_port_zephyr.c"}
    shared_by_module = set(module_sources) - zephyr_port

    bare, _ = _bare_metal_compiled_sources(tmp_path, model_dir)
    bare_port_dirs = {s.parent for s in bare if (FIRMWARE / "ports") in s.parents}
    assert FIRMWARE / "ports" / "zephyr" not in bare_port_dirs
    shared_by_bare = {s for s in bare if (FIRMWARE / "ports") not in s.parents}

    assert shared_by_module == shared_by_bare
    # that set is the exported library (model, API, exactly its kernels) and the device app;
    # no kernel from firmware/kernels/ a second time
    exported = set((model_dir / "src").resolve().glob("*.c"))
    assert (model_dir / "src" / "model.c").resolve() in exported
    assert any(p.name.startswith("mt_") for p in exported)
    assert exported <= shared_by_module
    assert not set((FIRMWARE / "kernels").glob("*.c")) & shared_by_module
    assert {FIRMWARE / "app" / "main.c", FIRMWARE / "app" / "mt_link.c", FIRMWARE / "app" / "mt_calib.S"} <= shared_by_module

    assert str(FIRMWARE / "include") in module["global_includes"]
    assert str(model_dir.resolve() / "include") in [str(Path(p).resolve()) for p in module["global_includes"]]
    assert 'MT_BUILD_ID="1a2b"' in module["defines"].replace('\\"', '"')
    assert 'MT_BOARD_NAME="nucleo_f446re"' in module["defines"].replace('\\"', '"')


def test_module_refuses_a_missing_model_dir(tmp_path):
    with pytest.raises(AssertionError, match="MT_MODEL_DIR"):
        _cmake_eval_zephyr_module(tmp_path, tmp_path / "nowhere")


def test_app_refuses_a_plain_model_folder(tmp_path):
    """A folder with only model.c and model.h (what the app took before) is not an
    export: the app says which command writes one."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.c").write_text("/* configure only */\n")
    (plain / "model.h").write_text("#define MT_ARENA_SIZE 16\n")
    with pytest.raises(AssertionError, match=r"(?s)must be a `microtile export` folder.*`microtile export MODEL.tflite"):
        _cmake_eval_zephyr_module(tmp_path, plain)


def test_sources_list_is_the_one_file_both_builds_read():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "firmware/sources.cmake" in text
    assert "GLOB" not in text  # no second list to drift apart


# ---- the Zephyr port implements the whole port interface ----

def test_zephyr_port_defines_every_port_function():
    header = (FIRMWARE / "include" / "mt_port.h").read_text()
    declared = set(re.findall(r"\b(mt_port_\w+)\s*\(", header))
    assert len(declared) >= 10
    port = (FIRMWARE / "ports" / "zephyr" / "mt_port_zephyr.c").read_text()
    defined = set(re.findall(r"^[a-z][\w \*]*?\b(mt_port_\w+)\s*\([^;]*?\)\s*\{", port, flags=re.M))
    assert declared <= defined, f"not implemented: {sorted(declared - defined)}"
    # the Zephyr APIs the brief names
    for api in ("DT_CHOSEN(zephyr_console)", "uart_poll_out", "uart_irq_rx_enable", "timing_init",
                "timing_start", "timing_counter_get", "GPIO_DT_SPEC_GET", "DT_ALIAS(microtile_trigger)",
                "sys_reboot", "k_sys_fatal_error_handler"):
        assert api in port, api


# ---- Kconfig and prj.conf agree ----

def _kconfig_symbols() -> set[str]:
    return set(re.findall(r"^(?:menu)?config\s+(\w+)", (MODULE / "Kconfig").read_text(), flags=re.M))


def _prj_conf() -> dict[str, str]:
    out = {}
    for line in (FIRMWARE / "zephyr_app" / "prj.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.removeprefix("CONFIG_")] = value
    return out


def test_kconfig_defines_what_the_app_and_port_use():
    symbols = _kconfig_symbols()
    assert {"MICROTILE", "MICROTILE_APP"} <= symbols
    prj = _prj_conf()
    used = {k for k in prj if k.startswith("MICROTILE")}
    port = (FIRMWARE / "ports" / "zephyr" / "mt_port_zephyr.c").read_text()
    used |= set(re.findall(r"CONFIG_(MICROTILE\w*)", port))
    used |= set(re.findall(r"CONFIG_(MICROTILE\w*)", (MODULE / "CMakeLists.txt").read_text()))
    assert used <= symbols, f"used but not in zephyr/Kconfig: {sorted(used - symbols)}"


def test_prj_conf_meets_the_app_dependencies():
    kconfig = (MODULE / "Kconfig").read_text()
    app_block = kconfig.split("config MICROTILE_APP", 1)[1].split("\nconfig ", 1)[0].split("\nif ", 1)[0]
    deps = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\b", " ".join(re.findall(r"depends on (.*)", app_block))))
    assert deps == {"SERIAL", "UART_INTERRUPT_DRIVEN", "TIMING_FUNCTIONS", "REBOOT"}
    prj = _prj_conf()
    for dep in deps:
        assert prj.get(dep) == "y", f"prj.conf must set CONFIG_{dep}=y"
    # nothing else may write to the link UART
    for quiet in ("UART_CONSOLE", "PRINTK", "BOOT_BANNER", "LOG"):
        assert prj.get(quiet) == "n", quiet
    assert prj["MICROTILE_APP"] == "y"


# ---- trigger overlays from the board YAMLs ----

def _board_with(name: str, **raw):
    base = load_board("netduinoplus2")
    return dataclasses.replace(base, name=name, raw={**base.raw, **raw})


@pytest.mark.parametrize("spec, pin", [
    ("PA8", ("A", 8)), ("pb10", ("B", 10)), ({"pin": "PC7"}, ("C", 7)), ({"port": "GPIOD", "pin": 14}, ("D", 14)),
])
def test_trigger_pin_forms(spec, pin):
    assert zephyr.trigger_pin(_board_with("nucleo_f446re", trigger=spec)) == pin


@pytest.mark.parametrize("spec", ["PA16", "A8", "PZ1", {"pin": 3}])
def test_trigger_pin_rejects_bad_pins(spec):
    with pytest.raises(BoardError, match="not a pin like PA8"):
        zephyr.trigger_pin(_board_with("nucleo_f446re", trigger=spec))


def test_trigger_overlay_text():
    text = zephyr.trigger_overlay(_board_with("nucleo_f446re", trigger="PA8"))
    assert "gpios = <&gpioa 8 GPIO_ACTIVE_HIGH>;" in text
    assert "microtile-trigger = &mt_trigger;" in text
    assert text.count("{") == text.count("}")
    assert zephyr.trigger_overlay(load_board("netduinoplus2")) is None


def test_committed_overlays_match_the_board_yamls():
    expected = zephyr.expected_overlays()
    committed = set(zephyr.OVERLAY_DIR.glob("*.overlay"))
    hint = "run `python -m microtile.build.zephyr overlays` and commit firmware/zephyr_app/boards/"
    assert committed == set(expected), hint
    for path, text in expected.items():
        assert path.read_text() == text, hint
        assert path.stem in NUCLEO_ZEPHYR_BOARDS


# ---- board names, the west build command and its error paths ----

def test_zephyr_board_names():
    for name in NUCLEO_ZEPHYR_BOARDS:
        assert zephyr.zephyr_board_name(_board_with(name)) == name
    assert zephyr.zephyr_board_name(_board_with("my_board", zephyr={"board": "nucleo_g474re"})) == "nucleo_g474re"
    with pytest.raises(BoardError, match="no Zephyr build"):
        zephyr.zephyr_board_name(load_board("netduinoplus2"))


def test_west_build_command(tmp_path):
    cmd = zephyr.zephyr_build_command("/usr/bin/west", "nucleo_f446re", tmp_path / "w", tmp_path / "model",
                                      "00ff", "nucleo_f446re")
    assert cmd[:2] == ["/usr/bin/west", "build"]
    assert cmd[cmd.index("-b") + 1] == "nucleo_f446re"
    assert cmd[cmd.index("-d") + 1] == str(tmp_path / "w")
    sep = cmd.index("--")
    assert str(zephyr.APP_DIR) in cmd[:sep]
    assert cmd[sep + 1:] == [f"-DMT_MODEL_DIR={tmp_path / 'model'}", "-DMT_BUILD_ID=00ff",
                             "-DMT_BOARD_NAME=nucleo_f446re"]
    assert zephyr.APP_DIR.joinpath("CMakeLists.txt").is_file() and zephyr.APP_DIR.joinpath("prj.conf").is_file()
    flash = zephyr.zephyr_flash_command("west", tmp_path / "w", probe="0670FF")
    assert flash == ["west", "flash", "-d", str(tmp_path / "w"), "-r", "pyocd", "--", "--dev-id=0670FF"]


@pytest.fixture(scope="module")
def small_model():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.tflite"
        path.write_bytes(zoo_model_bytes("op_conv_3x3_same_relu"))
        return compile_model(load_tflite(path))


def test_build_without_zephyr_base_says_what_to_set(small_model, monkeypatch, tmp_path):
    monkeypatch.delenv("ZEPHYR_BASE", raising=False)
    with pytest.raises(ToolMissingError, match=r"ZEPHYR_BASE is not set.*west init -l.*west update"):
        zephyr.build_zephyr(small_model, _board_with("nucleo_f446re"), tmp_path)
    assert not (tmp_path / "west").exists()


def test_build_with_a_bad_zephyr_base(small_model, monkeypatch, tmp_path):
    monkeypatch.setenv("ZEPHYR_BASE", str(tmp_path))
    with pytest.raises(ToolMissingError, match="not a Zephyr source tree"):
        zephyr.build_zephyr(small_model, _board_with("nucleo_f446re"), tmp_path / "b")


def test_build_for_a_board_without_zephyr(small_model, tmp_path):
    with pytest.raises(BoardError, match="nucleo_f446re"):
        zephyr.build_zephyr(small_model, load_board("netduinoplus2"), tmp_path)


def test_west_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(zephyr.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ToolMissingError, match="pip install west"):
        zephyr.find_west()


@pytest.mark.skipif(not os.environ.get("ZEPHYR_BASE"), reason="ZEPHYR_BASE not set: needs a Zephyr workspace "
                    "(docs/zephyr.md) to build the app for real")
@pytest.mark.parametrize("board_name", sorted(NUCLEO_ZEPHYR_BOARDS))
def test_zephyr_app_builds(small_model, board_name, tmp_path):
    from elftools.elf.elffile import ELFFile

    board = load_board(board_name)
    fw = zephyr.build_zephyr(small_model, board, tmp_path)
    with open(fw.elf, "rb") as f:
        elf = ELFFile(f)
        symbols = {s.name for s in elf.get_section_by_name(".symtab").iter_symbols()}
    assert {"main", "mt_port_counter_read", "mt_model_def", "k_sys_fatal_error_handler"} <= symbols
    assert 0 < fw.sizes.rom_bytes <= board.flash_bytes
