# shellcheck shell=bash
# Variables set here are read by the scripts that source this file, which shellcheck cannot see from here.
# shellcheck disable=SC2034
# Shared by the tpu/*.sh launch scripts: the accelerator table, option parsing helpers, validation, and run_cmd
# (prints a command under --dry-run, runs it otherwise). Sourced, never executed.

# Where setup.sh puts sq-jax on every worker and where run.sh finds it: a venv, because the TPU VM images ship
# Python 3.10 and sq-jax needs >= 3.11 (uv provides the interpreter). Relative to the worker's home directory,
# where every command run through gcloud ssh starts.
REMOTE_VENV=.venvs/sq-jax
REMOTE_PYTHON=3.12
LIBTPU_FIND_LINKS=https://storage.googleapis.com/jax-releases/libtpu_releases.html

PROG=${0##*/}
DRY_RUN=0
NAME=
ZONE=
PROJECT=

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# --- the accelerator table ------------------------------------------------------------------------------------
# The number in an accelerator type counts different things per generation:
#   v4-N, v5p-N        N = TensorCores, 2 per chip ("megacore"): v4-32 and v5p-32 are 16 chips. JAX sees one
#                      device per chip, so a mesh on v5p-32 has 16 devices. 4 chips per host: v5p-32 = 4 hosts.
#   v5litepod-N (v5e), N = chips, 1 TensorCore each: v5litepod-8 = 8 chips. Up to 8 chips are one host;
#   v6e-N (Trillium)   larger slices have 4 chips per host (v5litepod-16 = 16 chips on 4 hosts).
#
#   family      N counts  valid N                        chips     hosts          default --runtime-version
#   v5litepod   chips     1 4 8 16 32 64 128 256         N         1 if N<=8      v2-alpha-tpuv5-lite
#   v6e         chips     1 4 8 16 32 64 128 256         N         else N/4       v2-alpha-tpuv6e
#   v5p         cores     multiple of 8, 8..12288        N/2       chips/4        v2-alpha-tpuv5
#   v4          cores     multiple of 8, 8..4096         N/2       chips/4        tpu-ubuntu2204-base
#
# e.g. v5litepod-8 = 8 chips / 1 host, v5litepod-16 = 16 / 4, v6e-8 = 8 / 1, v4-32 = 16 / 4, v5p-32 = 16 / 4.
# gcloud has the last word on which sizes a zone offers; this table catches typos and mesh mismatches early.
TPU_FAMILIES="v5litepod (v5e), v6e, v5p, v4"

# tpu_lookup TYPE: sets TPU_FAMILY, TPU_CHIPS, TPU_HOSTS, TPU_DEFAULT_RUNTIME, or dies naming what is wrong.
tpu_lookup() {
  local type=$1 family n
  family=${type%-*}
  n=${type##*-}
  if [[ $type != *-* || ! $n =~ ^[1-9][0-9]*$ ]]; then
    die "unknown accelerator type '$type': expected FAMILY-N, e.g. v5litepod-8, v5p-32, v4-32 (families: $TPU_FAMILIES)"
  fi
  case $family in
    v5litepod | v6e)
      [[ $n =~ ^(1|4|8|16|32|64|128|256)$ ]] \
        || die "unknown accelerator type '$type': $family slices have 1, 4, 8, 16, 32, 64, 128 or 256 chips"
      TPU_CHIPS=$n
      if ((n <= 8)); then TPU_HOSTS=1; else TPU_HOSTS=$((n / 4)); fi
      if [[ $family == v5litepod ]]; then TPU_DEFAULT_RUNTIME=v2-alpha-tpuv5-lite; else TPU_DEFAULT_RUNTIME=v2-alpha-tpuv6e; fi
      ;;
    v5p | v4)
      local max=4096
      [[ $family == v5p ]] && max=12288
      if ((n % 8 != 0 || n > max)); then
        die "unknown accelerator type '$type': $family-N counts TensorCores (2 per chip, 4 chips per host), so N is a multiple of 8 up to $max"
      fi
      TPU_CHIPS=$((n / 2))
      TPU_HOSTS=$((TPU_CHIPS / 4))
      if [[ $family == v5p ]]; then TPU_DEFAULT_RUNTIME=v2-alpha-tpuv5; else TPU_DEFAULT_RUNTIME=tpu-ubuntu2204-base; fi
      ;;
    *) die "unknown accelerator type '$type': family '$family' is not one of $TPU_FAMILIES" ;;
  esac
  TPU_FAMILY=$family
}

# check_mesh MESH TYPE: MESH is DATA,FSDP,TENSOR; their product must be the slice's chip count (= JAX devices).
check_mesh() {
  local mesh=$1 type=$2 d f t
  [[ $mesh =~ ^([1-9][0-9]*),([1-9][0-9]*),([1-9][0-9]*)$ ]] \
    || die "--mesh '$mesh': expected DATA,FSDP,TENSOR as three positive integers, e.g. 1,16,1"
  d=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} t=${BASH_REMATCH[3]}
  tpu_lookup "$type"
  if ((d * f * t != TPU_CHIPS)); then
    die "--mesh $mesh has $((d * f * t)) devices but $type has $TPU_CHIPS chips (JAX devices): the product DATA*FSDP*TENSOR must be $TPU_CHIPS"
  fi
  MESH_DATA=$d MESH_FSDP=$f MESH_TENSOR=$t
}

# --- validation -----------------------------------------------------------------------------------------------
require_name() {
  [[ -n $NAME ]] || die "missing --name: the TPU VM (or queued resource) name"
  [[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
    || die "--name '$NAME': lowercase letters, digits and dashes, starting with a letter, at most 63 characters"
}

require_zone() {
  [[ -n $ZONE ]] || die "missing --zone: the zone of the TPU, e.g. us-east5-a (v5p), us-west4-a (v5e), us-central2-b (v4)"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' is not a zone name like us-east5-a"
}

# check_gs URL WHAT: a Cloud Storage path, gs://BUCKET[/PATH].
check_gs() {
  [[ $1 =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$ ]] \
    || die "$2 '$1' is not a Cloud Storage path: expected gs://BUCKET/PATH"
}

# gs_bucket URL: gs://BUCKET/PATH -> gs://BUCKET
gs_bucket() {
  local rest=${1#gs://}
  printf 'gs://%s\n' "${rest%%/*}"
}

# check_workers SPEC: what gcloud's --worker takes with --command: all, an index, a list or ranges (0,2-3).
check_workers() {
  [[ $1 == all || $1 =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] \
    || die "--workers '$1': expected all, a worker index (0), a list (0,2) or a range (0-3)"
}

# need_value OPTION ARGS...: an option's value must be there and must not be the next option.
need_value() {
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"
}

# --- option parsing -------------------------------------------------------------------------------------------
# split_eq ARGS...: ARGS with every --opt=value (before a bare --) split into --opt value, so both forms work.
split_eq() {
  ARGS=()
  while (($#)); do
    case $1 in
      --) ARGS+=("$@"); return ;;
      --*=*) ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# parse_common ARGS...: the options every script takes. Sets SHIFT (how many arguments it used); dies on an
# unknown option so a typo never silently runs something else.
parse_common() {
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    --name) need_value "$@"; NAME=$2; SHIFT=2 ;;
    --zone) need_value "$@"; ZONE=$2; SHIFT=2 ;;
    --project) need_value "$@"; PROJECT=$2; SHIFT=2 ;;
    *) die "unknown option '$1' (see $PROG --help)" ;;
  esac
}

COMMON_HELP="Common options:
  --name NAME              TPU VM name (required; with --queued also the queued resource id)
  --zone ZONE              zone, e.g. us-east5-a (v5p), us-west4-a (v5e), us-central2-b (v4) (required)
  --project PROJECT        Google Cloud project (default: gcloud's configured project)
  --dry-run                print every gcloud / gsutil command, one per line prefixed with '+ ', run nothing
  -h, --help               this help"

# gcloud flags that every TPU command gets: --zone, and --project when given.
loc_flags() {
  LOC=("--zone=$ZONE")
  [[ -z $PROJECT ]] || LOC+=("--project=$PROJECT")
}

# --- running --------------------------------------------------------------------------------------------------
# quote_word WORD: WORD as the shell would need it: bare when it is plain, otherwise in single quotes. Used so a
# dry-run line can be pasted into a shell, and to build the command strings the workers run.
quote_word() {
  local q="'\\''"
  if [[ $1 =~ ^[-A-Za-z0-9_@%+=:,./]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[a-z][-a-z]*=)(.*)$ ]]; then
    # --flag='value' reads better than '--flag=value' and means the same
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/$q}"
  else
    printf "'%s'" "${1//\'/$q}"
  fi
}

quote_cmd() {
  local out=() w
  for w in "$@"; do out+=("$(quote_word "$w")"); done
  printf '%s' "${out[*]}"
}

# run_cmd CMD...: under --dry-run print '+ CMD' on stdout and run nothing; otherwise echo it to stderr (a
# trace in the log) and run it.
run_cmd() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_cmd "$@")"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# require_tools TOOL...: only checked when commands really run, so --dry-run works without the Cloud SDK.
require_tools() {
  ((DRY_RUN)) && return 0
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "'$t' not found: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install)"
  done
}

# check_bucket_exists URL: fail now rather than after a long run when the bucket is missing or not ours.
check_bucket_exists() {
  local bucket
  bucket=$(gs_bucket "$1")
  if ((DRY_RUN)); then
    run_cmd gsutil ls -b "$bucket"
  else
    run_cmd gsutil ls -b "$bucket" >/dev/null || die "bucket $bucket does not exist or is not readable with your credentials"
  fi
}

# ssh_workers WORKERS REMOTE_COMMAND: run a shell command on TPU workers (all of them at once with 'all').
ssh_workers() {
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" "--worker=$1" "--command=$2"
}
