#!/bin/sh
# Preflight start-of-task attestation for Slurm (slurm.conf: TaskProlog=).
#
# slurmstepd runs a TaskProlog as the job's user, with the job's environment,
# before every task of every step (the batch script, each srun task). If it
# exits non-zero the task does not start: the batch job ends FAILED
# (ExitCode 1:0), an srun step exits 1; the node is not drained. Lines it
# prints as "print TEXT" go to the task's stdout (the job's --output file, or
# srun's stdout); its stderr is discarded. (The slurmd Prolog= is no use
# here: a non-zero exit drains the node and requeues the job held, and the
# submitter never sees its output.)
#
# Job contract (environment of the job, e.g. sbatch --export=ALL,...):
#   PREFLIGHT_MODEL=/path/model.pt   the model file the job will run
#   PREFLIGHT_BATCH=/path/batch.pt   optional: the batch file, attested too
#   the Preflight job id: PREFLIGHT_JOB_ID=<job-id>, else the job's
#   --comment=preflight:<job-id> (the submit gate's tag; a 64-hex digest tag
#   is not a job id and cannot be attested).
# With both a job id and PREFLIGHT_MODEL it runs
#   preflight-thin attest --server S --job-id J --model M [--batch B]
# and refuses the task unless attest exits 0; attest's message (which names
# both sha256 digests when the file is not the checked one) is printed to the
# task's stdout.
#
# Settings: preflight_gate.conf next to this script (the submit gate's file;
# keep it readable by job users), key = value lines:
#   server = SERVERS                   (required to attest: HOST:PORT, a list
#                                       H1:P1,H2:P2 or dns:///NAME:PORT, as
#                                       for preflight-thin --server)
#   cli = /usr/bin/preflight-thin
#   timeout = 5                        (seconds for the verdict lookup)
#   attest_require = no|yes            (default no: a task without a job id
#                                       or without PREFLIGHT_MODEL starts,
#                                       unattested; yes: it is refused)
#   attest_on_missing = reject|admit   (no verdict stored; default reject)
#   attest_on_unavailable = reject|admit (service down or no server set;
#                                       default admit, as the submit gate)
# Attestation catches the wrong file, not a hostile user: the job's user
# controls the environment this script reads.

conf_file="$(dirname "$0")/preflight_gate.conf"
server=""
cli=/usr/bin/preflight-thin
timeout=5
attest_require=no
attest_on_missing=reject
attest_on_unavailable=admit
if [ -r "$conf_file" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in \#* | "") continue ;; esac
    key=$(printf '%s' "$line" | sed -n 's/^[[:space:]]*\([A-Za-z0-9_]*\)[[:space:]]*=.*$/\1/p')
    value=$(printf '%s' "$line" | sed -n 's/^[^=]*=[[:space:]]*//p' | sed 's/[[:space:]]*$//')
    case "$key" in
      server) server=$value ;;
      cli) cli=$value ;;
      timeout) timeout=$value ;;
      attest_require) attest_require=$value ;;
      attest_on_missing) attest_on_missing=$value ;;
      attest_on_unavailable) attest_on_unavailable=$value ;;
    esac
  done <"$conf_file"
fi

show() {  # Each line of $1 to the task's stdout, as a TaskProlog must print it.
  printf '%s\n' "$1" | while IFS= read -r l; do printf 'print %s\n' "$l"; done
}

say() { show "preflight: $1"; }

decide() {  # decide POLICY MESSAGE
  if [ "$1" = admit ]; then
    say "$2; task started by policy"
    exit 0
  fi
  say "$2; task refused by policy"
  exit 1
}

job_id=${PREFLIGHT_JOB_ID:-}
if [ -z "$job_id" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  comment=$(squeue --noheader --format=%k --jobs="$SLURM_JOB_ID" 2>/dev/null)
  job_id=$(printf '%s' "$comment" | sed -n 's/.*preflight:\([A-Za-z0-9._:/-]*\).*/\1/p' | head -n 1)
  # A request digest tags a verdict, not a job id: nothing to attest against.
  if printf '%s' "$job_id" | grep -Eq '^[0-9a-f]{64}$'; then job_id=""; fi
fi
model=${PREFLIGHT_MODEL:-}

if [ -z "$job_id" ] || [ -z "$model" ]; then
  [ -z "$job_id" ] && [ -z "$model" ] && [ "$attest_require" != yes ] && exit 0
  if [ -z "$job_id" ]; then
    missing="no Preflight job id (PREFLIGHT_JOB_ID or --comment=preflight:<job-id>)"
  else
    missing="job $job_id names no PREFLIGHT_MODEL"
  fi
  if [ "$attest_require" = yes ]; then
    say "this cluster requires attested jobs: $missing; task refused"
    exit 1
  fi
  say "$missing; task started unattested"
  exit 0
fi
[ -n "$server" ] || decide "$attest_on_unavailable" "no Preflight server configured"

set -- attest --server "$server" --job-id "$job_id" --model "$model" --timeout "$timeout"
[ -n "${PREFLIGHT_BATCH:-}" ] && set -- "$@" --batch "$PREFLIGHT_BATCH"
out=$("$cli" "$@" 2>&1)
code=$?
case "$code" in
  0) show "$out"; exit 0 ;;
  1 | 2) show "$out"; say "task refused"; exit 1 ;;
  4) decide "$attest_on_missing" "no Preflight verdict stored for job $job_id" ;;
  *) decide "$attest_on_unavailable" "the Preflight service did not answer ($out)" ;;
esac
