#!/usr/bin/env bash
# Runs a list of GPU jobs in the background on the GPU machine: one device call starts them, short calls poll. The machine goes
# back 30 s after a call and a call may not pass 10 minutes, so long work must outlive the call that started it; and every call
# copies the working tree onto the machine again, under whatever still runs there — so the chain first copies the tree to /tmp/w
# and runs from that copy.
#   tools/gpu/chain.sh start JOBS [WAIT_S]  (carry .device) copy the tree to /tmp/w, run JOBS' lines one after another there in
#                                         the background, then poll for up to WAIT_S seconds (default 0)
#   tools/gpu/chain.sh poll [WAIT_S]        wait up to WAIT_S seconds (default 0) while the chain runs, then copy every job's log and
#                                         output to $OUT.
# Either call stages data/gpu to /tmp/tern-data when it carries it, for jobs marked `data` (the start call fits it beside a
# .device without Tern.Tests.Gpu; with the tests, carry the data in the first poll instead).
# JOBS: a file of lines `NAME | COMMAND` or `NAME data | COMMAND` (waits until the data is staged; `#` starts a comment). Each
# COMMAND runs in /tmp/w/tree (the copy) with OUT=/tmp/w/out/NAME; its output goes to /tmp/w/logs/NAME.log; /tmp/w/status
# lists each job's start, end, exit status and seconds. Size WAIT_S so that a call stays well under its limit: one that hits it loses the machine.
set -uo pipefail
W=/tmp/w OUT=${OUT:-/tmp/tern-out}
mkdir -p "$OUT"

stage_data() {
  [ -d data/gpu ] && [ ! -e /tmp/tern-data/.ready ] || return 0
  bash tools/gpu/default_model.sh stage > /dev/null && touch /tmp/tern-data/.ready && echo "staged data/gpu to /tmp/tern-data"
}

poll() {
  local until=$(( $(date +%s) + ${1:-0} ))
  while [ -e $W/running ] && [ "$(date +%s)" -lt "$until" ]; do sleep 10; done
  [ -d $W ] || { echo "no chain on this machine (/tmp/w is gone: a fresh machine)"; return 1; }
  cp -r $W/logs $W/out $W/status "$OUT"/ 2>/dev/null
  echo "--- status ($( [ -e $W/running ] && echo running || echo finished ))"; cat $W/status
  local last; last=$(ls -t $W/logs/*.log 2>/dev/null | head -1)
  [ -n "$last" ] && { echo "--- $(basename "$last")"; tr '\r' '\n' < "$last" | grep -v '^$' | tail -${TAIL:-12}; }
  return 0
}

case ${1:?start|poll} in
  start)
    jobs=${2:?a jobs file}
    [ -d .device ] || { echo "carry .device (tools/gpu/pack.sh)"; exit 2; }
    [ -e $W/running ] && { echo "a chain already runs"; poll "${3:-0}"; exit; }
    rm -rf $W && mkdir -p $W/logs $W/out && cp -r . $W/tree && : > $W/status && touch $W/running
    stage_data
    setsid nohup bash -c '
      cd '"$W"'/tree
      while IFS= read -r line; do
        line=${line%%#*}; [[ $line == *"|"* ]] || continue
        head=${line%%|*}; command=${line#*|}; name=$(echo $head | cut -d" " -f1); needs=$(echo $head | cut -s -d" " -f2)
        if [ "$needs" = data ]; then for _ in $(seq 180); do [ -e /tmp/tern-data/.ready ] && break; sleep 5; done; fi
        start=$(date +%s); echo "$name started $(date -u +%T)" >> '"$W"'/status
        mkdir -p '"$W"'/out/$name
        OUT='"$W"'/out/$name bash -c "$command" > '"$W"'/logs/$name.log 2>&1; rc=$?
        echo "$name rc=$rc $(( $(date +%s) - start )) s" >> '"$W"'/status
      done < "'"$W"'/tree/'"$jobs"'"
      rm -f '"$W"'/running' > /dev/null 2>&1 < /dev/null &
    poll "${3:-0}" ;;
  poll)
    stage_data
    poll "${2:-0}" ;;
esac
