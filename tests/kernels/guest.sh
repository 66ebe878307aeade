#!/usr/bin/env bash
# Runs inside one kernel of the matrix (or on the host, as its "host" row), in the checkout:
# doctor, facts, demo, then the kernel tests given. Results go to OUT (shared with the host).
# usage: guest.sh NAME OUT [pytest node id ... | @FILE of node ids, one a line]
set -uo pipefail
name=$1 out=$2
shift 2
if [ $# -eq 1 ] && [ "${1#@}" != "$1" ]; then  # the ids in a file (matrix.guest_command says why)
  mapfile -t ids < "${1#@}"
  set -- "${ids[@]}"
fi
export PYTHONDONTWRITEBYTECODE=1 CI=true TAPTTRACE_KERNEL_MATRIX="$name"
# The guest's modprobe finds the kernel's modules (virtme-ng links them); load what the labs use.
for m in veth bridge tun br_netfilter nf_tables; do modprobe "$m" 2>/dev/null || true; done
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
step() {  # step NAME command...: its output in OUT/NAME.log, exit code and seconds beside it
  local s=$SECONDS
  "${@:2}" > "$out/$1.log" 2>&1
  local rc=$?
  echo $rc > "$out/$1.rc"
  echo $((SECONDS - s)) > "$out/$1.seconds"
  echo "matrix[$name]: $1 exit $rc in $((SECONDS - s)) s"
  return $rc
}
status=0
uname -r
step doctor .venv/bin/tapttrace doctor || status=1
.venv/bin/python -m tests.kernels.facts > "$out/facts.json" || status=1
step demo .venv/bin/tapttrace demo || status=1
if [ $# -gt 0 ]; then
  step pytest .venv/bin/pytest -q -p no:cacheprovider --junitxml="$out/pytest.xml" "$@" || status=1
fi
tail -n 30 "$out"/*.log
exit $status
