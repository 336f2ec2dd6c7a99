#!/usr/bin/env bash
# Create .venv (if missing) and install pgseg with the given extras. Installs the Debian packages it
# needs first: python3-venv where venv is missing, and the demo data sources when --with-demo-data (with
# the dev extras also chromium, for the headless-browser check of the demo page in tests/test_demo_page.py).
# Usage: bash scripts/setup_env.sh EXTRAS [--with-demo-data]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
WITH_DEMO_DATA="${2:-}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_pkgs=()
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_pkgs+=(python3-venv)
if [ "$WITH_DEMO_DATA" = "--with-demo-data" ]; then
  for p in tuxpaint-stamps-default openclipart-png fonts-noto-color-emoji; do
    dpkg -s "$p" >/dev/null 2>&1 || apt_pkgs+=("$p")
  done
  case ",$EXTRAS," in
    *,dev,*) dpkg -s chromium >/dev/null 2>&1 || apt_pkgs+=(chromium) ;;
  esac
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${apt_pkgs[*]}"
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${apt_pkgs[@]}" >/dev/null; }; then
    echo "[setup] could not install ${apt_pkgs[*]} (need root or sudo)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>/dev/null || true
echo "[setup] pip install -e .[$EXTRAS]"
python -m pip install -q -e ".[$EXTRAS]"
