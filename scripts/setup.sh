#!/usr/bin/env bash
# Installs what microtile needs, and is a quick no-op when everything is there:
# Debian packages (Arm GCC + newlib, cmake, ninja, qemu-system-arm, host gcc) and a
# Python venv at .venv with the pinned requirements and microtile installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v arm-none-eabi-gcc >/dev/null || need_apt+=(gcc-arm-none-eabi)
[ -e /usr/lib/arm-none-eabi/newlib/thumb/v7e-m+fp/hard/libc_nano.a ] || need_apt+=(libnewlib-arm-none-eabi)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
command -v gcc >/dev/null || need_apt+=(gcc)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
command -v chromium >/dev/null || need_apt+=(chromium)  # the lab report's browser test

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp=.venv/.microtile-setup
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: creating the Python environment in .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi

# labgrid in a venv of its own (requirements-labgrid.txt says why)
lg_stamp=.venv-labgrid/.microtile-setup
lg_want=$(sha256sum requirements-labgrid.txt | cut -d' ' -f1)
if [ ! -f "$lg_stamp" ] || [ "$(cat "$lg_stamp")" != "$lg_want" ]; then
  echo "setup: creating the labgrid environment in .venv-labgrid"
  python3 -m venv .venv-labgrid
  .venv-labgrid/bin/pip install -q --disable-pip-version-check -r requirements-labgrid.txt
  echo "$lg_want" > "$lg_stamp"
fi
