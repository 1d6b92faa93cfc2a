#!/usr/bin/env bash
# Create a TPU VM or pod slice: directly (tpu-vm create) or through the queued-resources API (--queued), which
# waits for capacity instead of failing when the zone has none right now.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<HELP
Usage: $PROG --name NAME --zone ZONE --accelerator-type TYPE [options]

Create a Cloud TPU VM (one host) or pod slice (several hosts, "workers").

Options:
  --accelerator-type TYPE  v5litepod-8, v5litepod-16, v6e-8, v5p-32, v4-32, ... (required). v4-N and v5p-N count
                           TensorCores (2 per chip): v5p-32 is 16 chips on 4 hosts; v5litepod-N and v6e-N count chips.
  --runtime-version V      TPU software version (default per family: v2-alpha-tpuv5-lite for v5litepod,
                           v2-alpha-tpuv6e for v6e, v2-alpha-tpuv5 for v5p, tpu-ubuntu2204-base for v4)
  --spot                   Spot capacity: much cheaper, can be preempted at any time
  --queued                 request it as a queued resource (gcloud compute tpus queued-resources create): waits
                           for capacity; watch it with 'gcloud compute tpus queued-resources describe NAME --zone ZONE'
  --mesh DATA,FSDP,TENSOR  check that the mesh you will train with fits the slice (product = chips) before paying for it
$COMMON_HELP

Examples:
  $PROG --name sq-v5e --zone us-west4-a --accelerator-type v5litepod-8
  $PROG --name sq-v5p --zone us-east5-a --accelerator-type v5p-32 --mesh 1,16,1 --spot --queued
HELP
}

ACCEL=
RUNTIME=
SPOT=0
QUEUED=0
MESH=
split_eq "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}  # the guard: an empty array is "unbound" to bash < 4.4 (macOS)
while (($#)); do
  case $1 in
    --accelerator-type) need_value "$@"; ACCEL=$2; shift 2 ;;
    --runtime-version) need_value "$@"; RUNTIME=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --mesh) need_value "$@"; MESH=$2; shift 2 ;;
    *) parse_common "$@"; shift "$SHIFT" ;;
  esac
done

require_name
require_zone
[[ -n $ACCEL ]] || die "missing --accelerator-type, e.g. v5litepod-8 or v5p-32"
tpu_lookup "$ACCEL"
[[ -z $MESH ]] || check_mesh "$MESH" "$ACCEL"
RUNTIME=${RUNTIME:-$TPU_DEFAULT_RUNTIME}
require_tools gcloud
loc_flags

if ((TPU_HOSTS == 1)); then hosts="1 host (worker 0)"; else hosts="$TPU_HOSTS hosts (workers 0-$((TPU_HOSTS - 1)))"; fi
note "$ACCEL: $TPU_CHIPS chips on $hosts, runtime $RUNTIME"
extra=()
((SPOT)) && extra+=(--spot)
if ((QUEUED)); then
  # The node gets the same name as the request, so the other scripts address it by --name alone.
  run_cmd gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" "${LOC[@]}" \
    "--accelerator-type=$ACCEL" "--runtime-version=$RUNTIME" ${extra[@]+"${extra[@]}"}
  ((DRY_RUN)) || note "queued: once 'gcloud compute tpus queued-resources describe $NAME --zone=$ZONE'" \
    "says ACTIVE, the VM is there: run tpu/setup.sh"
else
  run_cmd gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" \
    "--accelerator-type=$ACCEL" "--version=$RUNTIME" ${extra[@]+"${extra[@]}"}
  ((DRY_RUN)) || note "created; next: tpu/setup.sh --name $NAME --zone $ZONE --repo URL (or --wheel gs://...)"
fi
