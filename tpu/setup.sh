#!/usr/bin/env bash
# Install jax[tpu] and sq-jax on every worker of a TPU VM / pod slice, from a git ref or from a wheel on GCS.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<HELP
Usage: $PROG --name NAME --zone ZONE (--repo URL [--git-ref REF] | --wheel gs://BUCKET/sq_jax-*.whl) [options]

On every worker (at once): get uv, make the venv ~/$REMOTE_VENV with Python $REMOTE_PYTHON (the TPU images ship
3.10; sq-jax needs 3.11+), and pip install jax[tpu] (libtpu from $LIBTPU_FIND_LINKS)
together with sq-jax, so pip resolves one consistent set. Rerunning it upgrades in place.

Options:
  --repo URL               git URL of sq-jax to pip install (git+URL@REF); required unless --wheel is given.
                           The workers clone it themselves: a private repo needs credentials there (or use --wheel)
  --git-ref REF            branch, tag or commit (default: main)
  --wheel gs://.../X.whl   install this wheel instead (built with 'python -m build --wheel', copied with gsutil)
  --python VERSION         Python for the venv (default: $REMOTE_PYTHON)
  --workers W              all (default), an index (0), a list (0,2) or a range (0-3)
$COMMON_HELP

Examples:
  $PROG --name sq-v5p --zone us-east5-a --repo https://github.com/ORG/sq-jax --git-ref v0.1.0
  $PROG --name sq-v5p --zone us-east5-a --wheel gs://my-bucket/wheels/sq_jax-0.1.0-py3-none-any.whl
HELP
}

REPO=
GIT_REF=main
WHEEL=
WORKERS=all
PYTHON=$REMOTE_PYTHON
split_eq "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}  # the guard: an empty array is "unbound" to bash < 4.4 (macOS)
while (($#)); do
  case $1 in
    --repo) need_value "$@"; REPO=$2; shift 2 ;;
    --git-ref) need_value "$@"; GIT_REF=$2; shift 2 ;;
    --wheel) need_value "$@"; WHEEL=$2; shift 2 ;;
    --workers) need_value "$@"; WORKERS=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    *) parse_common "$@"; shift "$SHIFT" ;;
  esac
done

require_name
require_zone
check_workers "$WORKERS"
[[ $PYTHON =~ ^3\.[0-9]+$ ]] || die "--python '$PYTHON': expected a version like 3.12"
if [[ -n $WHEEL ]]; then
  [[ -z $REPO ]] || die "give --repo or --wheel, not both"
  check_gs "$WHEEL" "--wheel"
  [[ $WHEEL == *.whl ]] || die "--wheel '$WHEEL' is not a wheel (*.whl)"
  package="/tmp/sq-jax-wheel/${WHEEL##*/}"   # pip reads the version from the file name: keep it
else
  [[ -n $REPO ]] || die "missing --repo URL (the sq-jax git repository the workers install from) or --wheel gs://..."
  [[ $REPO =~ ^(https://|http://|ssh://|git@|file://)[^[:space:]]+$ ]] \
    || die "--repo '$REPO' is not a git URL (https://..., ssh://... or git@host:path)"
  [[ $GIT_REF =~ ^[A-Za-z0-9._/-]+$ ]] || die "--git-ref '$GIT_REF' is not a branch, tag or commit name"
  package="git+${REPO#git+}@$GIT_REF"
fi
if [[ -n $WHEEL ]]; then require_tools gcloud gsutil; else require_tools gcloud; fi
loc_flags

# The worker-side script: one line of commands joined by &&, so the first failure stops it (and the dry-run
# prints it on one line). pipefail makes a failed download in 'curl | sh' count.
steps=(
  "set -o pipefail"
  "{ test -x .local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | env UV_NO_MODIFY_PATH=1 sh; }"
  ".local/bin/uv venv --seed --allow-existing --python $PYTHON $REMOTE_VENV"
)
if [[ -n $WHEEL ]]; then
  steps+=("rm -rf /tmp/sq-jax-wheel" "mkdir -p /tmp/sq-jax-wheel" "gsutil cp $(quote_word "$WHEEL") /tmp/sq-jax-wheel/")
fi
steps+=(
  "$REMOTE_VENV/bin/python -m pip install -U \"jax[tpu]\" $(quote_word "$package") -f $LIBTPU_FIND_LINKS"
  # Imports only (prints the jax version and where sq_jax landed): touching the TPU here would wait for every
  # host of a pod slice.
  "$REMOTE_VENV/bin/python -c \"import jax, sq_jax; print(jax.__version__, sq_jax.__file__)\""
)
remote=$(printf ' && %s' "${steps[@]}")
remote=${remote# && }

if [[ -n $WHEEL ]]; then
  # Fail here, not on every worker, when the wheel is not there.
  if ((DRY_RUN)); then
    run_cmd gsutil -q stat "$WHEEL"
  else
    run_cmd gsutil -q stat "$WHEEL" || die "wheel $WHEEL not found (or not readable with your credentials)"
  fi
fi
ssh_workers "$WORKERS" "$remote"
((DRY_RUN)) || note "done; next: tpu/run.sh --name $NAME --zone $ZONE -- SQ-JAX-COMMAND"
