#!/usr/bin/env bash
# System packages the test suite runs for real: Debian's PostgreSQL server (Dagster's instance in the service
# end-to-end test) and headless Chromium (the validation pages opened offline in a browser). Installs only what
# is missing; without root it says what to install and the tests that need it skip, saying why.
set -euo pipefail
missing=()
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium-headless-shell)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "note: install ${missing[*]} (Debian packages) to run every test; the tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
