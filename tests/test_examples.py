"""The scheduled-run examples (examples/cron, examples/systemd, examples/monthly-predict.yaml, examples/species):
the species list and the recipe load through treemap's own loaders, the wrapper maps every treemap exit code to
its message and passes the code on, and the crontab line and the systemd units say what the README says."""

import configparser
import csv
import fcntl
import os
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest

from treemap.cli import cli
from treemap.taxonomy import load_species_list

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPT = EXAMPLES / "cron" / "treemap-monthly.sh"
CRONTAB = EXAMPLES / "cron" / "treemap.crontab"
SERVICE = EXAMPLES / "systemd" / "treemap-monthly.service"
TIMER = EXAMPLES / "systemd" / "treemap-monthly.timer"
RECIPE = EXAMPLES / "monthly-predict.yaml"
SPECIES = EXAMPLES / "species" / "central-europe.csv"
GLOBALGEOTREE = Path("/work/shared/data/real/globalgeotree-10keval")
#: The region's main forest trees, missing from the 10kEval lists: their rows are the project's own (see NOTICE).
ADDED = {"Fagus sylvatica", "Picea abies", "Abies alba", "Pseudotsuga menziesii", "Quercus robur", "Quercus petraea",
         "Acer pseudoplatanus", "Tilia cordata", "Betula pendula", "Alnus glutinosa", "Populus tremula"}
LEAF_TYPES = {"Evergreen Needleleaf", "Deciduous Needleleaf", "Evergreen Broadleaf", "Deciduous Broadleaf"}


# -- the species list ---------------------------------------------------------------------------------------------
def test_species_list_loads_through_treemaps_loader():
    species = load_species_list(SPECIES)
    with SPECIES.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(species) == 46
    # the loader silently collapses duplicate species, so compare with the raw rows
    assert len(rows) == len(species) == len(set(species.species))
    assert species.prompts[0].count(" / ") == 3
    for taxon in species.taxa:
        assert taxon.level0 in LEAF_TYPES, taxon
        assert taxon.species.split()[0] == taxon.genus, taxon
        assert taxon.family.endswith("aceae"), taxon
    genera, _ = species.groups("genus")
    families, _ = species.groups("family")
    assert len(genera) < len(species) and len(families) < len(genera)


@pytest.mark.skipif(not GLOBALGEOTREE.is_dir(), reason=f"GlobalGeoTree-10kEval lists not at {GLOBALGEOTREE}")
def test_species_taxonomy_is_the_sources():
    source: dict[str, set] = {}
    for path in sorted(GLOBALGEOTREE.glob("GlobalGeoTree-10kEval-*.csv")):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                source.setdefault(row["level3_species"], set()).add(
                    (row["level0"], row["level1_family"], row["level2_genus"], row["level3_species"]))
    taxa = load_species_list(SPECIES).taxa
    for taxon in taxa:
        if taxon.species in ADDED:
            assert taxon.species not in source, f"{taxon.species} is in the source now: take its row"
            continue
        assert {(taxon.level0, taxon.family, taxon.genus, taxon.species)} == source.get(taxon.species), taxon
    assert ADDED <= {taxon.species for taxon in taxa}
    # the added rows follow the source's conventions: a family the source uses for that genus elsewhere
    families = {row[2]: row[1] for rows in source.values() for row in rows}
    for taxon in taxa:
        if taxon.species in ADDED and taxon.genus in families:
            assert families[taxon.genus] == taxon.family, taxon


def test_species_notice_names_the_source():
    notice = (EXAMPLES / "species" / "NOTICE").read_text()
    assert "GlobalGeoTree-10kEval" in notice and "MUYang99/GlobalGeoTree" in notice and "terms" in notice
    assert all(name in " ".join(notice.split()) for name in ADDED)


# -- the recipe -----------------------------------------------------------------------------------------------------
def test_recipe_loads_through_the_predict_command():
    """The recipe goes through `treemap predict --recipe` option parsing (no run): every key is a predict option,
    every value passes its type, and the wrapper's command-line options win."""
    ctx = cli.commands["predict"].make_context(
        "predict", ["--recipe", str(RECIPE), "--aoi", "aoi.geojson", "--end", "2026-02-28", "--out", "maps/2026-03"])
    p = ctx.params
    assert p["catalog"] == "earth-search" and p["top_k"] == 3 and p["max_cloud"] == 80.0
    assert p["max_unreadable"] == 0.05 and p["model"] == "models/ggt.safetensors"
    assert str(p["aoi"]) == "aoi.geojson" and str(p["out"]) == "maps/2026-03" and str(p["end"]) == "2026-02-28"
    # relative paths are for TREEMAP_HOME, which is laid out like examples/
    assert (EXAMPLES / p["species"]).resolve() == SPECIES


# -- the wrapper script ---------------------------------------------------------------------------------------------
def test_wrapper_is_valid_bash():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.fixture
def sandbox(tmp_path):
    """A TREEMAP_HOME and a fake `treemap` on PATH. The fake stands in for a long mapping run: it records its
    arguments, prints a line on stdout and stderr, and exits with $FAKE_TREEMAP_EXIT."""
    home, bindir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bindir.mkdir()
    fake = bindir / "treemap"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_TREEMAP_ARGS"\necho "fake product path"\n'
                    'echo "fake treemap stderr" >&2\nexit "${FAKE_TREEMAP_EXIT:-0}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C", "TREEMAP_HOME": str(home),
           "FAKE_TREEMAP_ARGS": str(tmp_path / "args")}
    return env, home, tmp_path / "args"


def run_wrapper(env, *args, code=0):
    return subprocess.run(["bash", str(SCRIPT), *args], env={**env, "FAKE_TREEMAP_EXIT": str(code)},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("code, message", [
    (0, "ok (exit 0): products published in"),
    (2, "bad input (exit 2): check the recipe, AOI"),
    (3, "some tiles failed (exit 3): finished tiles are kept, no products were published; run "
        "'treemap-monthly.sh 2026-03' again to retry only the failed tiles (errors: "
        "maps/2026-03/.treemap-work/predict-*/manifest.json)"),
    (74, "write failed (exit 74): disk full or maps/2026-03 not writable"),
    (75, "locked (exit 75): another treemap run is still writing to maps/2026-03; skipped"),
    (130, "interrupted (exit 130)"),
    (1, "unexpected failure (exit 1)"),
])
def test_wrapper_maps_exit_codes(sandbox, code, message):
    env, home, args = sandbox
    proc = run_wrapper(env, "2026-03", code=code)
    assert proc.returncode == code, proc.stderr
    assert args.read_text().split("\n")[:-1] == [
        "-q", "predict", "--recipe", "monthly-predict.yaml", "--aoi", "aoi.geojson", "--end", "2026-02-28",
        "--out", "maps/2026-03"]
    log = (home / "logs" / "treemap-monthly.log").read_text()
    assert message in log and "fake product path" in log and "fake treemap stderr" in log
    assert proc.stdout == ""
    if code == 0:
        assert proc.stderr == ""
    else:
        assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr
        assert "treemap-monthly.sh[" in proc.stderr and " 2026-03: " in proc.stderr


@pytest.mark.parametrize("month, end", [("2026-03", "2026-02-28"), ("2024-03", "2024-02-29"),
                                        ("2026-01", "2025-12-31"), ("2025-12", "2025-11-30")])
def test_wrapper_window_ends_the_day_before_the_month(sandbox, month, end):
    env, _, args = sandbox
    assert run_wrapper(env, month).returncode == 0
    given = args.read_text().split("\n")
    assert given[given.index("--end") + 1] == end and given[given.index("--out") + 1] == f"maps/{month}"


def test_wrapper_defaults_to_this_month_and_repeats_the_same_command(sandbox):
    env, home, args = sandbox
    before = date.today().strftime("%Y-%m")
    first = run_wrapper(env, code=3)
    calls = [args.read_text()]
    second = run_wrapper(env)
    calls.append(args.read_text())
    after = date.today().strftime("%Y-%m")
    assert first.returncode == 3 and second.returncode == 0
    if before == after:  # a rerun in the same month is the same command, so treemap resumes its tiles
        assert calls[0] == calls[1] and f"--out\nmaps/{before}\n" in calls[0]
    log = (home / "logs" / "treemap-monthly.log").read_text()
    assert log.count(": start in ") == 2 and "exit 3" in log and "ok (exit 0)" in log  # appended, not rewritten


def test_wrapper_lock_skips_an_overlapping_run(sandbox):
    """A run for another month holds the wrapper's lock: this one exits 75 without starting treemap."""
    env, home, args = sandbox
    (home / "maps").mkdir()
    with (home / "maps" / ".treemap-monthly.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_wrapper(env, "2026-03")
    assert proc.returncode == 75 and not args.exists()
    assert "locked (exit 75): another treemap-monthly.sh run holds maps/.treemap-monthly.lock" in proc.stderr
    assert run_wrapper(env, "2026-03").returncode == 0  # released: the next attempt runs


@pytest.mark.parametrize("change, code, message", [
    ({"month": "2026-13"}, 2, "bad input (exit 2): month '2026-13' is not YYYY-MM"),
    ({"month": "march"}, 2, "is not YYYY-MM"),
    ({"TREEMAP_HOME": "/nonexistent/treemap"}, 2, "TREEMAP_HOME /nonexistent/treemap is not a folder"),
    ({"TREEMAP_BIN": "no-such-treemap"}, 127, "treemap not found (exit 127)"),
])
def test_wrapper_refuses_bad_settings_before_running(sandbox, change, code, message):
    env, _, args = sandbox
    month = change.pop("month", "2026-03")
    proc = run_wrapper({**env, **change}, month)
    assert proc.returncode == code and message in proc.stderr and not args.exists()


def test_wrapper_unopenable_lock_is_a_write_error(sandbox):
    env, home, args = sandbox
    (home / "maps" / ".treemap-monthly.lock").mkdir(parents=True)  # a folder where the lock file should be
    proc = run_wrapper(env, "2026-03")
    assert proc.returncode == 74 and "cannot open the lock file" in proc.stderr and not args.exists()


def test_wrapper_usage():
    assert subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True).returncode == 0
    proc = subprocess.run(["bash", str(SCRIPT), "2026-01", "2026-02"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# -- cron -----------------------------------------------------------------------------------------------------------
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_jobs() -> list[list[str]]:
    jobs = []
    for line in CRONTAB.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue  # blank, comment, environment setting
        jobs.append(line.split(None, 5))
    return jobs


def test_crontab_line_parses_and_calls_the_wrapper():
    (job,) = cron_jobs()
    assert len(job) == 6, job  # five time fields and the command
    for field, (low, high) in zip(job[:5], CRON_RANGES):
        for part in field.split(","):
            base, _, step = part.partition("/")
            assert not step or step.isdigit(), field
            if base != "*":
                for value in base.split("-"):
                    assert value.isdigit() and low <= int(value) <= high, field
    assert job[:5] == ["15", "3", "2", "*", "*"]  # 03:15 on the 2nd of every month
    command = job[5]
    assert command.split()[0].endswith("/treemap-monthly.sh") and "%" not in command


# -- systemd --------------------------------------------------------------------------------------------------------
def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_service_unit_keys():
    service = unit(SERVICE)
    s = service["Service"]
    assert s["User"] == "treemap" and s["Group"] == "treemap" and s["WorkingDirectory"] == "/srv/treemap"
    assert s["ExecStart"].split()[0].endswith("/treemap-monthly.sh")
    assert int(s["Nice"]) > 0 and s["IOSchedulingClass"] in ("best-effort", "idle")
    success = set(s["SuccessExitStatus"].split())
    assert "75" in success  # locked: another run is doing the work
    assert not success & {"2", "3", "74"}  # failed tiles, bad input, write errors stay failures: operators hear
    assert s["RestartForceExitStatus"].split() == ["75"] and s["Type"] != "oneshot"
    assert "network-online.target" in service["Unit"]["After"]


def test_timer_unit_keys_and_schedule_match_cron():
    timer = unit(TIMER)
    t = timer["Timer"]
    assert t["Persistent"] == "true" and t["RandomizedDelaySec"] and t["Unit"] == SERVICE.name
    assert timer["Install"]["WantedBy"] == "timers.target"
    minute, hour, dom, *_ = cron_jobs()[0]
    assert t["OnCalendar"] == f"*-*-{int(dom):02d} {int(hour):02d}:{int(minute):02d}:00"


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_schedule():
    proc = subprocess.run([SYSTEMD_ANALYZE, "calendar", "--iterations", "3", unit(TIMER)["Timer"]["OnCalendar"]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4})-(\d\d)-(\d\d) 03:15:00", proc.stdout)
    assert len(elapses) == 3 and all(day == "02" for _, _, day in elapses)
    assert len({(y, m) for y, m, _ in elapses}) == 3  # one a month


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    """ExecStart names the installed path (/usr/local/bin), which verify checks for an executable; the copy
    verified here points it at the repository's script instead. Parse warnings ("..., ignoring") leave the exit
    status 0, so any output about the units fails the test too."""
    for path in (SERVICE, TIMER):
        text = path.read_text()
        if path == SERVICE:
            text = text.replace("/usr/local/bin/treemap-monthly.sh", str(SCRIPT))
        (tmp_path / path.name).write_text(text)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "treemap-monthly" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
