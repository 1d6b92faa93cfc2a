#!/usr/bin/env bash
# Delete a TPU VM / pod slice (or the queued resource that made it), so it stops costing money.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<HELP
Usage: $PROG --name NAME --zone ZONE [--queued] [options]

Deletes without asking (gcloud --quiet): everything on the workers' disks goes with them, so copy results
first (tpu/copy.sh, or tpu/run.sh --collect).

Options:
  --queued                 it was created with tpu/create.sh --queued: delete the queued resource and, with
                           --force, its TPU VM
$COMMON_HELP

Examples:
  $PROG --name sq-v5e --zone us-west4-a
  $PROG --name sq-v5p --zone us-east5-a --queued
HELP
}

QUEUED=0
split_eq "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}  # the guard: an empty array is "unbound" to bash < 4.4 (macOS)
while (($#)); do
  case $1 in
    --queued) QUEUED=1; shift ;;
    *) parse_common "$@"; shift "$SHIFT" ;;
  esac
done

require_name
require_zone
require_tools gcloud
loc_flags

if ((QUEUED)); then
  run_cmd gcloud compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet
else
  run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
fi
