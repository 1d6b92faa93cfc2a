#!/usr/bin/env bash
# Run one sq-jax command on every worker of a TPU VM / pod slice at once (JAX multi-host needs every host to run
# the same program), stream the output tagged by worker, keep a local log, and copy results to GCS afterwards.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<HELP
Usage: $PROG --name NAME --zone ZONE [options] -- SQ-JAX-ARGS...

Runs '~/$REMOTE_VENV/bin/sq-jax SQ-JAX-ARGS' (installed by tpu/setup.sh) in the home directory of every worker,
with SQ_JAX_DISTRIBUTED=1, PYTHONUNBUFFERED=1 and TQDM_MININTERVAL=10 set (JAX finds the other hosts of a TPU
slice by itself: jax.distributed.initialize() needs no arguments there). Relative paths in SQ-JAX-ARGS that are
local files (the config) are copied to the same path on every worker first. Output streams here, each line
tagged [wN] with its worker, and is appended to LOG-DIR/NAME/<timestamp>.log.

Options:
  --workers W              all (default: a multi-host slice needs every host), an index, a list or a range
  --env KEY=VAL            set KEY on the workers (repeatable), e.g. --env HF_TOKEN=... --env HF_HOME=/mnt/hf
  --accelerator-type TYPE  the slice's type; needed by --mesh
  --mesh DATA,FSDP,TENSOR  check it against the slice (product = chips) and pass it as mesh.data/fsdp/tensor
                           overrides (qft, qpo, sft only; other commands take their mesh from the config)
  --collect gs://BUCKET/P  afterwards (also after a failure), mirror RESULTS of worker 0 into gs://BUCKET/P
                           (gsutil -m rsync -r: RESULTS/X lands at gs://BUCKET/P/X; a rerun copies what changed)
  --results DIR            what --collect copies, relative to the worker's home (default: runs)
  --log-dir DIR            local log folder (default: logs)
$COMMON_HELP

Examples:
  $PROG --name sq-v5e --zone us-west4-a --collect gs://my-bucket/questions -- \\
      generate configs/generate/qwen2-math-questions.yaml
  $PROG --name sq-v5p --zone us-east5-a --accelerator-type v5p-32 --mesh 1,16,1 -- \\
      qft configs/qft/qwen2-math-7b-instruct.yaml mesh.distributed=true
HELP
}

WORKERS=all
ENVS=()
ACCEL=
MESH=
COLLECT=
RESULTS=runs
LOG_DIR=logs
CMD=()
split_eq "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}  # the guard: an empty array is "unbound" to bash < 4.4 (macOS)
while (($#)); do
  case $1 in
    --) shift; CMD=("$@"); break ;;
    --workers) need_value "$@"; WORKERS=$2; shift 2 ;;
    --env) need_value "$@"; ENVS+=("$2"); shift 2 ;;
    --accelerator-type) need_value "$@"; ACCEL=$2; shift 2 ;;
    --mesh) need_value "$@"; MESH=$2; shift 2 ;;
    --collect) need_value "$@"; COLLECT=$2; shift 2 ;;
    --results) need_value "$@"; RESULTS=$2; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift 2 ;;
    *) parse_common "$@"; shift "$SHIFT" ;;
  esac
done

require_name
require_zone
check_workers "$WORKERS"
[[ -z $ACCEL ]] || tpu_lookup "$ACCEL"
# 'sq-jax' itself may be written after the --, or left out.
if ((${#CMD[@]})) && [[ ${CMD[0]} == sq-jax ]]; then CMD=("${CMD[@]:1}"); fi
((${#CMD[@]})) || die "missing the sq-jax command: put it after --, e.g. -- qft configs/qft/qwen2-math-7b-instruct.yaml"
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv': expected KEY=VALUE with KEY a shell variable name"
done
if [[ -n $MESH ]]; then
  [[ -n $ACCEL ]] || die "--mesh needs --accelerator-type to check the mesh against the slice's chips"
  check_mesh "$MESH" "$ACCEL"
  case ${CMD[0]} in
    qft | qpo | sft) CMD+=("mesh.data=$MESH_DATA" "mesh.fsdp=$MESH_FSDP" "mesh.tensor=$MESH_TENSOR") ;;
    *) die "--mesh applies to qft, qpo and sft; '${CMD[0]}' takes its mesh from its config" ;;
  esac
fi
if [[ -n $COLLECT ]]; then
  check_gs "$COLLECT" "--collect"
  [[ $RESULTS =~ ^[A-Za-z0-9._][-A-Za-z0-9._/]*$ ]] || die "--results '$RESULTS': a path relative to the worker's home"
fi
if [[ -n $COLLECT ]]; then require_tools gcloud gsutil; else require_tools gcloud; fi
if [[ -n $ACCEL && $WORKERS != all ]] && ((TPU_HOSTS > 1)); then
  note "warning: $ACCEL has $TPU_HOSTS hosts; a JAX program started on only some of them waits for the others"
fi
loc_flags

# Config files named on the command line go to the same relative path on every worker.
files=() dirs=()
for arg in "${CMD[@]:1}"; do
  if [[ -f $arg && $arg != /* && $arg != *..* && $arg =~ ^[-A-Za-z0-9._/]+$ ]]; then
    files+=("$arg")
    [[ $arg != */* ]] || dirs+=("${arg%/*}")
  fi
done

envs=(SQ_JAX_DISTRIBUTED=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10)
for kv in ${ENVS[@]+"${ENVS[@]}"}; do envs+=("${kv%%=*}=$(quote_word "${kv#*=}")"); done
# On the worker: find its index (the metadata server's agent-worker-number, the one JAX's TPU cluster detection
# reads; hostname if that fails), then run sq-jax with every output line tagged [wN]. Progress bars redraw with
# \r, which would hold a whole bar back until its end: tr makes each redraw a line, and TQDM_MININTERVAL keeps
# those to one per 10 s (--env TQDM_MININTERVAL=1 overrides it). pipefail keeps sq-jax's exit status through the
# pipe. The $ expansions are for the worker's shell, hence the single quotes.
# shellcheck disable=SC2016
tag_worker='W=$(curl -sf --max-time 5 -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
# shellcheck disable=SC2016
tag_lines='2>&1 | stdbuf -o0 tr "\r" "\n" | sed -u -e "/^$/d" -e "s/^/[w$W] /"'
remote="set -o pipefail && $tag_worker && export ${envs[*]} && $REMOTE_VENV/bin/sq-jax $(quote_cmd "${CMD[@]}") $tag_lines"

[[ -z $COLLECT ]] || check_bucket_exists "$COLLECT"
if ((${#files[@]})); then
  ((${#dirs[@]} == 0)) || ssh_workers "$WORKERS" "mkdir -p $(quote_cmd "${dirs[@]}")"
  for f in "${files[@]}"; do
    run_cmd gcloud compute tpus tpu-vm scp "$f" "$NAME:$f" "${LOC[@]}" "--worker=$WORKERS"
  done
fi

rc=0
if ((DRY_RUN)); then
  ssh_workers "$WORKERS" "$remote"
else
  log="$LOG_DIR/$NAME/$(date +%Y%m%d-%H%M%S).log"
  mkdir -p "${log%/*}"
  note "log: $log"
  # The trace line run_cmd writes to stderr goes into the log too, so every log says what it ran.
  { ssh_workers "$WORKERS" "$remote"; } 2>&1 | tee -a "$log" || rc=$?
  ((rc == 0)) || note "sq-jax failed on at least one worker (exit $rc); see $log"
fi

if [[ -n $COLLECT ]]; then
  # Worker 0 is process 0, which writes the manifests, reports and metrics (on one host: everything). rsync, not
  # cp -r: cp names the copy differently depending on whether the destination exists, so a second collect would
  # land somewhere else.
  ssh_workers 0 "gsutil -m rsync -r $(quote_word "$RESULTS") $(quote_word "$COLLECT")"
fi
exit "$rc"
