#!/usr/bin/env bash
# treemap-monthly.sh [YYYY-MM]: the monthly tree-species map, for cron or a systemd timer.
#
# Maps the 12 months before MONTH (default: this month; 2026-03 maps 2025-03-01 .. 2026-02-28) into
# $TREEMAP_MAPS/MONTH with `treemap predict --recipe`, appends everything to $TREEMAP_RUN_LOG, says in one line
# what treemap's exit code means, and exits with that code. Run it again with the same MONTH to resume: the
# tiles that are already finished are kept and only the failed or missing ones are computed.
#
# Settings (environment; relative paths are relative to TREEMAP_HOME):
#   TREEMAP_HOME     working directory                 /srv/treemap
#   TREEMAP_BIN      the treemap command               treemap (from PATH)
#   TREEMAP_RECIPE   option defaults for predict       monthly-predict.yaml
#   TREEMAP_AOI      area of interest (GeoJSON)        aoi.geojson
#   TREEMAP_MAPS     one folder per month inside it    maps
#   TREEMAP_RUN_LOG  this script's log                 logs/treemap-monthly.log
#   TREEMAP_LOCK     lock against overlapping runs     $TREEMAP_MAPS/.treemap-monthly.lock
#
# Exit codes are treemap's: 0 published, 2 bad input, 3 some tiles failed, 74 a write failed, 75 locked
# (another run is still going). Messages go to the log; for every code but 0 they also go to stderr, where cron
# mails them and systemd puts them in the journal.
set -euo pipefail

prog=treemap-monthly.sh
usage="usage: $prog [YYYY-MM]   (default: the current month)"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "$usage"
    exit 0
fi
if [[ $# -gt 1 ]]; then
    echo "$usage" >&2
    exit 2
fi
month=${1:-$(date +%Y-%m)}

home=${TREEMAP_HOME:-/srv/treemap}
bin=${TREEMAP_BIN:-treemap}
recipe=${TREEMAP_RECIPE:-monthly-predict.yaml}
aoi=${TREEMAP_AOI:-aoi.geojson}
maps=${TREEMAP_MAPS:-maps}
run_log=${TREEMAP_RUN_LOG:-logs/treemap-monthly.log}
lock=${TREEMAP_LOCK:-$maps/.treemap-monthly.lock}

# say CODE MESSAGE: one line in the log; also on stderr unless CODE is 0
say() {
    local line
    line="$(date '+%Y-%m-%dT%H:%M:%S%z') $prog[$$] $month: $2"
    if [[ -n ${log_ready:-} ]]; then
        printf '%s\n' "$line" >>"$run_log"
    fi
    if [[ $1 -ne 0 ]]; then
        printf '%s\n' "$line" >&2
    fi
}

if ! [[ $month =~ ^[0-9]{4}-(0[1-9]|1[0-2])$ ]]; then
    say 2 "bad input (exit 2): month '$month' is not YYYY-MM"
    exit 2
fi
if ! cd "$home" 2>/dev/null; then
    say 2 "bad input (exit 2): TREEMAP_HOME $home is not a folder this user can enter"
    exit 2
fi
if ! mkdir -p "$(dirname "$run_log")" "$maps" 2>/dev/null || ! : >>"$run_log" 2>/dev/null; then
    say 74 "write failed (exit 74): cannot create $maps or append to $run_log in $home"
    exit 74
fi
log_ready=1
if ! command -v "$bin" >/dev/null 2>&1; then
    say 127 "treemap not found (exit 127): TREEMAP_BIN=$bin is not a command (PATH=$PATH)"
    exit 127
fi

# GNU date: the last day of the month before MONTH ends the window; treemap starts it one year earlier.
end=$(date -d "$month-01 -1 day" +%F)
out=$maps/$month

# Runs for different months write to different folders, so treemap's own lock (on $out) does not keep them
# apart; this lock does. Without flock(1), treemap's lock still protects each month's folder.
if command -v flock >/dev/null 2>&1; then
    if ! { exec 9>>"$lock"; } 2>/dev/null; then
        say 74 "write failed (exit 74): cannot open the lock file $lock"
        exit 74
    fi
    if ! flock -n 9; then
        say 75 "locked (exit 75): another $prog run holds $lock and is still going; skipped, try again later"
        exit 75
    fi
fi

say 0 "start in $PWD: $bin -q predict --recipe $recipe --aoi $aoi --end $end --out $out"
rc=0
"$bin" -q predict --recipe "$recipe" --aoi "$aoi" --end "$end" --out "$out" >>"$run_log" 2>&1 || rc=$?

case $rc in
    0)  say 0 "ok (exit 0): products published in $out, run log $out/treemap.log" ;;
    2)  say 2 "bad input (exit 2): check the recipe, AOI, model, species list and catalog (treemap's error line is in $run_log); nothing was written" ;;
    3)  say 3 "some tiles failed (exit 3): finished tiles are kept, no products were published; run '$prog $month' again to retry only the failed tiles (errors: $out/.treemap-work/predict-*/manifest.json)" ;;
    74) say 74 "write failed (exit 74): disk full or $out not writable; finished tiles are kept, free space and run '$prog $month' again to resume" ;;
    75) say 75 "locked (exit 75): another treemap run is still writing to $out; skipped, try again later" ;;
    130) say 130 "interrupted (exit 130): finished tiles are kept; run '$prog $month' again to resume" ;;
    *)  say "$rc" "unexpected failure (exit $rc): see $run_log; finished tiles are kept, a rerun resumes" ;;
esac
exit "$rc"
