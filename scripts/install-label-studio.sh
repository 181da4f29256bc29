#!/usr/bin/env bash
# Label Studio (PyPI's label-studio) in a virtual environment of its own, for the round-trip test against a real
# server (cv_dataops_tests/end_to_end/test_label_studio_round_trip.py). Its own venv because its pins clash with
# ours (it brings Django, numpy 2.2, pytz 2022 and label-studio-sdk, which we never import).
#
#   scripts/install-label-studio.sh          install unless already installed; print the label-studio executable
#   scripts/install-label-studio.sh --path   print where the executable is (or would be); install nothing
#
# Where: $CV_DATAOPS_LABEL_STUDIO_VENV, else <cache>/cv-dataops/label-studio-<version> with <cache> being
# $XDG_CACHE_HOME or ~/.cache: outside the work tree, so a fresh clone on the same machine (as CI's is) reuses it,
# and creatable by any user. Every version of every dependency is pinned below (a `pip freeze` of an install that
# passed the test), so an install is the same on every machine. Installed = the stamp file exists; a failed or
# interrupted install leaves no stamp and is finished by the next run. It also leaves a migrated empty database
# (cv-dataops-template/label_studio.sqlite3 in the venv) that the test copies instead of migrating anew.
set -euo pipefail

LABEL_STUDIO_VERSION=1.23.2
cache_home="${XDG_CACHE_HOME:-${HOME:?set HOME or XDG_CACHE_HOME}/.cache}"
venv="${CV_DATAOPS_LABEL_STUDIO_VENV:-$cache_home/cv-dataops/label-studio-$LABEL_STUDIO_VERSION}"
executable="$venv/bin/label-studio"
stamp="$venv/.cv-dataops-installed"
template="$venv/cv-dataops-template"
installed() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "label-studio==$LABEL_STUDIO_VERSION" ] && [ -x "$executable" ] \
    && [ -f "$template/label_studio.sqlite3" ]
}

if [ "${1:-}" = "--path" ]; then
  echo "$executable"
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--path]" >&2
  exit 2
fi
if installed; then
  echo "$executable"
  exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] else 1)' 2>/dev/null; then
  echo "install-label-studio: label-studio $LABEL_STUDIO_VERSION needs Python 3.10 or newer; $python is" \
       "$("$python" --version 2>&1 || echo missing) (set PYTHON=...)" >&2
  exit 1
fi
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9  # another run installing the same venv: wait for it, then find it installed
  if installed; then
    echo "$executable"
    exit 0
  fi
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
cat >"$constraints" <<'CONSTRAINTS'
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
appdirs==1.4.4
argcomplete==3.7.2
asgiref==3.13.0
attr==0.3.1
attrs==26.1.0
azure-core==1.41.0
azure-storage-blob==12.31.1
black==26.10.1
bleach==6.4.0
boto3==1.44.8
botocore==1.44.8
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cloudpickle==3.1.3
colorama==0.4.6
croniter==7.0.0
cryptography==50.0.2
datamodel-code-generator==0.97.0
defusedxml==0.7.1
distro==1.9.0
Django==5.2.19
django-annoying==0.10.6
django-cors-headers==4.7.0
django-csp==3.7
django-debug-toolbar==3.2.1
django-environ==0.10.0
django-extensions==3.2.3
django-filter==24.3
django-migration-linter==5.2.0
django-ranged-fileresponse==0.1.2
django-rq==3.1
django-storages==1.12.3
django-user-agents==0.4.0
djangorestframework==3.17.2
djangorestframework_simplejwt==5.5.1
doclang==0.8.0
drf-dynamic-fields==0.3.0
drf-flex-fields==0.9.5
drf-generators==0.3.0
drf-spectacular==0.28.0
expiringdict==1.2.2
Faker==40.63.0
filelock==4.3.1
genson==1.4.0
google-api-core==2.44.0
google-auth==2.63.0
google-cloud-appengine-logging==1.11.0
google-cloud-audit-log==0.6.3
google-cloud-core==2.8.0
google-cloud-logging==3.17.0
google-cloud-storage==3.17.1
google-crc32c==1.9.0
google-resumable-media==2.11.0
googleapis-common-protos==1.76.0
grpc-google-iam-v1==0.14.6
grpcio==1.85.3
grpcio-status==1.85.3
h11==0.16.0
httpcore==1.0.9
httpx==0.29.0
idna==3.20
ijson==3.6.0
inflect==7.6.0
inflection==0.5.1
isodate==0.7.2
isort==8.0.1
jaraco.functools==4.6.0
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
joblib==1.6.0
jsf==0.11.2
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
label-studio-sdk==2.1.2
launchdarkly-server-sdk==8.2.1
lxml==6.1.3
lxml_html_clean==0.4.6
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
more-itertools==11.2.1
mypy_extensions==1.2.0
nltk==3.10.4
numpy==2.2.6
openai==1.109.1
opencv-python-headless==4.12.0.88
opentelemetry-api==1.45.2
ordered-set==4.0.2
packaging==26.4
pandas==3.1.1
pathspec==1.1.1
pillow==13.0.0
platformdirs==4.14.9
proto-plus==1.29.0
protobuf==7.36.2
psycopg==3.3.9
psycopg-binary==3.3.9
pyarrow==24.0.0
pyasn1==0.6.5
pyasn1_modules==0.4.2
pyboxen==1.3.0
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
PyJWT==2.13.0
pyRFC3339==2.1.1
python-dateutil==2.9.0.post0
python-json-logger==2.0.4
pytokens==0.4.1
pytz==2022.7.1
PyYAML==6.0.4
redis==5.2.1
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
requests-file==3.0.1
requests-mock==1.12.1
rich==15.0.0
rpds-py==2026.9.1
rq==2.6.1
rstr==3.2.2
rules==3.4
s3transfer==0.19.3
semver==3.1.2
sentry-sdk==2.75.0
setuptools==84.2.1
shellingham==1.5.4
six==1.17.0
smart_open==9.0.4
sniffio==1.3.1
sqlparse==0.6.1
tldextract==5.4.0
toml==0.10.2
tqdm==4.70.1
typeguard==4.6.1
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
ua-parser==1.0.2
ua-parser-builtins==202610
ujson==6.1.0
uritemplate==4.2.0
urllib3==2.8.0
user-agents==2.2.0
uuid_utils==0.19.0
watchfiles==1.3.0
webencodings==0.6.1
wheel==0.48.0
wrapt==2.5.2
xmljson==0.2.1
CONSTRAINTS

echo "install-label-studio: installing label-studio $LABEL_STUDIO_VERSION into $venv (a few minutes)" >&2
rm -f "$stamp"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --constraint "$constraints" "label-studio==$LABEL_STUDIO_VERSION" 2>&1 \
  | { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2  # this machine's pip config names absent indexes
"$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != sys.argv[1])" \
  "$LABEL_STUDIO_VERSION" || { echo "install-label-studio: pip left no label-studio $LABEL_STUDIO_VERSION" >&2; exit 1; }
[ -x "$executable" ] || { echo "install-label-studio: $executable is missing after the install" >&2; exit 1; }

# A migrated, empty database for tests to copy: Label Studio's migrations take minutes on a loaded 2-core
# machine, every time a fresh data dir starts. Made by Label Studio's own `migrate`, with no user in it.
echo "install-label-studio: migrating an empty template database (a few minutes)" >&2
building="$(mktemp -d "$venv/.template.XXXXXX")"
env -i PATH="/usr/bin:/bin" HOME="$building/home" LABEL_STUDIO_BASE_DATA_DIR="$building/data" \
  LABEL_STUDIO_LATEST_VERSION_CHECK=false LABEL_STUDIO_COLLECT_ANALYTICS=false \
  PYTHONPATH="$("$venv/bin/python" -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')" \
  "$venv/bin/python" -m label_studio.manage migrate --no-input -v 0 >"$building/migrate.log" 2>&1 \
  || { echo "install-label-studio: migrating the template database failed; see $building/migrate.log" >&2; exit 1; }
mkdir -p "$building/template"
mv "$building/data/label_studio.sqlite3" "$building/template/label_studio.sqlite3"
rm -rf "$template"
mv "$building/template" "$template"
rm -rf "$building"

echo "label-studio==$LABEL_STUDIO_VERSION" >"$stamp"
echo "$executable"
