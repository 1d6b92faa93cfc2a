#!/usr/bin/env bash
# Copy results between the TPU workers and Cloud Storage. gsutil runs on the workers themselves, so nothing
# passes through this machine (a 7B checkpoint goes worker -> bucket at datacenter speed).
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<HELP
Usage: $PROG --name NAME --zone ZONE --from SRC --to DST [options]

Runs 'gsutil -m cp -r SRC DST' on the workers. One of SRC / DST is gs://BUCKET/PATH, the other a path on the
workers (relative to the home directory, where tpu/run.sh runs sq-jax). gsutil's naming rule applies: copying
a folder to gs://B/P that already exists puts it at gs://B/P/FOLDER, otherwise at gs://B/P; --sync avoids that.

Options:
  --from SRC               what to copy: a path on the workers (upload) or gs://... (download)
  --to DST                 where to: gs://... (upload) or a path on the workers (download)
  --workers W              0 (default: process 0 writes the manifests and reports, and on one host everything),
                           all (e.g. a download every host needs, or per-host outputs), a list or a range
  --sync                   'gsutil -m rsync -r' instead: DST mirrors the folder SRC under the same names every
                           time and only what changed is copied (nothing is deleted); for resuming a run elsewhere
$COMMON_HELP

Examples:
  $PROG --name sq-v5e --zone us-west4-a --from runs/questions-qwen2-math --to gs://my-bucket/questions/
  $PROG --name sq-v5p --zone us-east5-a --workers all --from gs://my-bucket/data/seeds --to data/
  $PROG --name sq-v5e --zone us-west4-a --sync --from gs://my-bucket/sq-runs --to runs
HELP
}

FROM=
TO=
WORKERS=0
SYNC=0
split_eq "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}  # the guard: an empty array is "unbound" to bash < 4.4 (macOS)
while (($#)); do
  case $1 in
    --from) need_value "$@"; FROM=$2; shift 2 ;;
    --to) need_value "$@"; TO=$2; shift 2 ;;
    --workers) need_value "$@"; WORKERS=$2; shift 2 ;;
    --sync) SYNC=1; shift ;;
    *) parse_common "$@"; shift "$SHIFT" ;;
  esac
done

require_name
require_zone
check_workers "$WORKERS"
[[ -n $FROM ]] || die "missing --from (a path on the workers, or gs://BUCKET/PATH)"
[[ -n $TO ]] || die "missing --to (gs://BUCKET/PATH, or a path on the workers)"
# Anything with a scheme must be gs:// (s3://, http://... are not what gsutil on a TPU VM should get here).
[[ $FROM != *://* ]] || check_gs "$FROM" "--from"
[[ $TO != *://* ]] || check_gs "$TO" "--to"
if [[ $FROM == gs://* && $TO == gs://* ]]; then
  die "--from and --to are both gs:// paths: one must be a path on the workers (copy between buckets with gsutil directly)"
elif [[ $FROM != gs://* && $TO != gs://* ]]; then
  die "neither --from '$FROM' nor --to '$TO' is a gs://BUCKET/PATH: one side must be Cloud Storage"
fi
require_tools gcloud gsutil
loc_flags

if [[ $TO == gs://* ]]; then bucket_side=$TO; else bucket_side=$FROM; fi
check_bucket_exists "$bucket_side"
if ((SYNC)); then
  # rsync wants the destination folder to exist when it is on the worker.
  mk=
  [[ $TO == gs://* ]] || mk="mkdir -p $(quote_word "$TO") && "
  ssh_workers "$WORKERS" "${mk}gsutil -m rsync -r $(quote_word "$FROM") $(quote_word "$TO")"
else
  ssh_workers "$WORKERS" "gsutil -m cp -r $(quote_word "$FROM") $(quote_word "$TO")"
fi
