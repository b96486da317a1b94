#!/usr/bin/env bash
# The GPU measurements of issue 14, in one go on one GPU (sized for an H200, at most 8 minutes).
#
# Prepare on the CPU machine (once; 46 MB, carried with the working tree, limit 64 MiB):
#   mkdir -p gpu_data/cifar10 && cp ../shared/data/cifar10/*.parquet gpu_data/cifar10/
# Run from the repository root on the GPU machine, carrying gpu_data:
#   bash bench/gpu_suite.sh                    # results under $OUT (default runs/gpu_suite)
#   bash bench/gpu_suite.sh --steps bert,cnn   # a subset, e.g. to rerun what failed
#   bash bench/gpu_suite.sh --dry-run          # CPU: arguments, files, each script's arguments; runs nothing heavy
#
# Steps, each under its own `timeout` (a failure or timeout is recorded and the next step runs):
#   tests    pytest of tests/test_gpu.py (bf16 backend and HF parity) and the flash tests of
#            test_layers.py / test_hf_bert.py (they skip without flash-attn)   -> tests.log, tests_junit.xml
#   bert     bench/bert_throughput.py, BERT-base batch 64 x 128, pad-frac 0 and 0.3, ours with sdpa and
#            varlen vs transformers' BertForPreTraining (sdpa), bf16, AdamW, attention dropout 0 for
#            all models (varlen has none): eager, then every block compiled     -> bert_eager.*, bert_compile.*
#   vit      xformer train recipes/vit_cifar.yaml for VIT_EPOCHS epochs (default 10; warmup 5% of the
#            run as in the recipe): images/s, time per epoch, accuracy, 100 epochs projected -> vit/, vit.log
#   cnn      xformer train recipes/cnn_cifar.yaml as it is: time to 85% val accuracy -> cnn/, cnn.log
#   profile  bench/gpu_profile.py: GPU idle share and top kernels of BERT-base and ViT steps -> profile.*
#   mae      (only when named in --steps) xformer pretrain recipes/mae_cifar_gpu.yaml for MAE_MINUTES
#            (default 0.75): images/s, val loss against the per-patch-mean baseline, the reconstruction
#            pictures -> mae/, mae.log
#   mae_study (only when named in --steps) xformer sweep of recipes/studies/mae_cifar_gpu.yaml (issue 22) with
#            every train.max_minutes scaled so that the scratch arm trains MAE_STUDY_MINUTES (default 2) and
#            mae, finetune and probe half that each: about 2.5 x that plus 2 minutes in all (raise
#            SUITE_BUDGET_S to run it after other steps) -> mae_study/<arm>/ (metrics.jsonl, result.json,
#            config.yaml, train.log; the mae arm's reconstruction pictures), mae_study/ (the sweep's report.md
#            and plots), mae_study.log
# then $OUT/gpu_suite.json and $OUT/gpu_suite.md (the summary table, the goals met or not).
#
# Missing CIFAR data: a warning in --dry-run; in a real run the steps that train on CIFAR-10 and the ViT
# profile fail with a line saying so and everything else runs. Nothing is installed: the repository runs
# from PYTHONPATH; the preflight lists the modules this python lacks (a wheelhouse in gpu_data/wheels is
# installed into $WORK/site with --no-index when present).
# Environment: OUT, PYTHON (default python), VIT_EPOCHS, MAE_MINUTES, MAE_STUDY_MINUTES, VIT_SETS_EXTRA /
# CNN_SETS_EXTRA / MAE_SETS_EXTRA (more key=value overrides, space-separated), SUITE_BUDGET_S (default 460:
# the deadline of the last step), SUITE_WORK (scratch for run dirs and caches, default a new /tmp folder).

set -u
USAGE="usage: bash bench/gpu_suite.sh [--dry-run] [--steps tests,bert,vit,cnn,profile,mae,mae_study]"
ALL_STEPS="tests bert vit cnn profile mae mae_study"
DRY=0
STEPS_ARG="tests,bert,vit,cnn,profile"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --steps) [ $# -ge 2 ] || { echo "gpu_suite.sh: error: --steps needs a value ($USAGE)" >&2; exit 2; }
                 STEPS_ARG="$2"; shift ;;
        --steps=*) STEPS_ARG="${1#--steps=}" ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_suite.sh: error: unknown argument '$1' ($USAGE)" >&2; exit 2 ;;
    esac
    shift
done
SELECTED=""
for s in ${STEPS_ARG//,/ }; do
    case " $ALL_STEPS " in
        *" $s "*) SELECTED="$SELECTED $s" ;;
        *) echo "gpu_suite.sh: error: unknown step '$s' in --steps (choose from ${ALL_STEPS// /,})" >&2; exit 2 ;;
    esac
done
[ -n "$SELECTED" ] || { echo "gpu_suite.sh: error: --steps is empty ($USAGE)" >&2; exit 2; }
MAE_STUDY_MINUTES=${MAE_STUDY_MINUTES:-2}
[[ $MAE_STUDY_MINUTES =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && awk -v t="$MAE_STUDY_MINUTES" 'BEGIN { exit !(t > 0) }' \
    || { echo "gpu_suite.sh: error: MAE_STUDY_MINUTES='$MAE_STUDY_MINUTES' is not a positive number of minutes" >&2; exit 2; }
selected() { case " $SELECTED " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
step_selected() { case "$1" in bert_*) selected bert ;; *) selected "$1" ;; esac; }  # a name of ORDER

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export XFORMER_DATA="$REPO/gpu_data" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DATA_FILE=gpu_data/cifar10/train.parquet
VIT_EPOCHS=${VIT_EPOCHS:-10}
VIT_WARMUP=$(( (VIT_EPOCHS * 440 + 50) / 100 ))   # the recipe warms up 440 steps of 8,700 (5%)

# ------------------------------------------------------------------ the commands, shared with --dry-run
TEST_ARGS=(-p no:cacheprovider -q -rs tests/test_gpu.py
           tests/test_layers.py::test_flash_matches_math_reference_on_gpu
           tests/test_hf_bert.py::test_pretraining_parity_with_hf)
BERT_ARGS=(--size base --batch 64 --seq 128 --pad-frac 0 0.3 --backend sdpa,varlen --attn-dropout 0
           --optim --steps 20 --warmup 3)
# log_every divides the steps of an epoch (87 for ViT at 512, 351 for the CNN at 128), so every
# evaluation has a training record (with elapsed_s) at its step
VIT_SETS=(--set "train.epochs=$VIT_EPOCHS" --set "train.warmup_steps=$VIT_WARMUP" --set train.max_minutes=1.4
          --set train.log_every=29 --set train.progress=false)
CNN_SETS=(--set train.max_minutes=1.25 --set train.log_every=27 --set train.progress=false)
for kv in ${VIT_SETS_EXTRA:-}; do VIT_SETS+=(--set "$kv"); done   # e.g. VIT_SETS_EXTRA="train.max_minutes=3"
for kv in ${CNN_SETS_EXTRA:-}; do CNN_SETS+=(--set "$kv"); done
# 87 steps an epoch at 512: one evaluation (and reconstruction picture) per epoch, a training record at each
MAE_SETS=(--set "train.max_minutes=${MAE_MINUTES:-0.75}" --set train.log_every=29 --set train.progress=false)
for kv in ${MAE_SETS_EXTRA:-}; do MAE_SETS+=(--set "$kv"); done
STUDY=recipes/studies/mae_cifar_gpu.yaml   # run as a copy with its time budgets scaled (study_copy)
STUDY_SETS=(--set train.progress=false)
PROFILE_ARGS=(--targets bert,vit --warmup 5 --steps 8 --data-root gpu_data)
MODULES="torch transformers tokenizers einops pydantic yaml safetensors pyarrow numpy PIL tqdm huggingface_hub pytest"
FILES="bench/bert_throughput.py bench/gpu_profile.py tests/test_gpu.py tests/test_layers.py tests/test_hf_bert.py
       recipes/vit_cifar.yaml recipes/cnn_cifar.yaml recipes/mae_cifar_gpu.yaml recipes/bert_base.yaml
       recipes/studies/mae_cifar_gpu.yaml xformer/__main__.py"
# nominal seconds per step; a step may also use what the steps before it left unused
# (mae_study: its 2.5 x MAE_STUDY_MINUTES of training and about 30 s to start and finish each of its 4 arms)
declare -A NOMINAL=([tests]=70 [bert_eager]=45 [bert_compile]=95 [vit]=110 [cnn]=80 [profile]=60 [mae]=75
                    [mae_study]=$(awk -v t="$MAE_STUDY_MINUTES" 'BEGIN { printf "%d", 150 * t + 120 }'))
ORDER="tests bert_eager bert_compile vit cnn profile mae mae_study"

preflight() {  # $1: json path. Python, torch, CUDA and the modules this python lacks.
    timeout 90 "$PY" - "$1" $MODULES <<'PY'
import importlib.util, json, platform, sys
path, modules = sys.argv[1], sys.argv[2:]
missing = [m for m in modules if importlib.util.find_spec(m) is None]
info = {"python": platform.python_version(), "missing_modules": missing}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                has_varlen=importlib.util.find_spec("torch.nn.attention.varlen") is not None)
except Exception as err:  # reported, not fatal here
    info["torch_error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
json.dump(info, open(path, "w"), indent=2)
print(f"python {info['python']}, torch {info.get('torch')}, CUDA {info.get('cuda')} ({info.get('device')}), "
      f"varlen {info.get('has_varlen')}; missing modules: {', '.join(missing) or 'none'}")
PY
}

study_copy() {  # $1: where to write the study with every train.max_minutes scaled; the scratch arm's (the
    # recipe's own, 120) becomes MAE_STUDY_MINUTES, the variants' 60 half that
    "$PY" - "$STUDY" "$1" "$MAE_STUDY_MINUTES" <<'PY'
import sys
import yaml
src, dst, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3])
tree = yaml.safe_load(open(src))
factor = minutes / tree["train"]["max_minutes"]
def scale(node, in_train=False):  # train: {max_minutes: ...} at any depth, and a variant's train.max_minutes
    for key, value in node.items():
        if (key == "train.max_minutes" or (in_train and key == "max_minutes")) and value is not None:
            node[key] = value * factor
        elif isinstance(value, dict):
            scale(value, key == "train")
scale(tree)
with open(dst, "w") as f:
    f.write(f"# {src} with every train.max_minutes x {factor:g} (bench/gpu_suite.sh, MAE_STUDY_MINUTES={minutes:g})\n")
    yaml.safe_dump(tree, f, sort_keys=False)
PY
}

summarize() {  # $1: the folder with the step outputs; writes gpu_suite.json and gpu_suite.md there
    "$PY" - "$1" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None

steps = {}
if (out / "steps.tsv").is_file():
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, secs, limit = line.split("\t")
        steps[name] = {"rc": int(rc), "seconds": int(secs), "timeout_s": int(limit),
                       "timed_out": int(rc) in (124, 137)}
summary = {"preflight": load("preflight.json"), "steps": steps}

# tests: counts from the JUnit file
try:
    root = ET.parse(out / "tests_junit.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        status = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        detail = next((c.get("message", "") for c in case if c.tag in ("failure", "error", "skipped")), "")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "status": status,
                      "detail": detail.splitlines()[0][:200] if detail else ""})
    summary["tests"] = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failure", "error", "skipped")}
    summary["tests"]["cases"] = cases
except (OSError, ET.ParseError, AttributeError):
    summary["tests"] = None

# BERT throughput: one row per (compile, pad-frac, model)
bert_rows = []
for mode in ("eager", "compile"):
    rec = load(f"bert_{mode}.json")
    for g in (rec or {}).get("groups", []):
        for name, r in g["results"].items():
            bert_rows.append({"compile": mode == "compile", "pad_frac": g["pad_frac"], "model": name,
                              "backend": r["backend"], "tokens_per_s": r["tokens_per_s"], "mfu": r.get("mfu"),
                              "mfu_trainer": r.get("mfu_trainer"), "speedup_vs_hf": r.get("speedup_vs_hf")})
        for name, reason in g.get("errors", {}).items():
            bert_rows.append({"compile": mode == "compile", "pad_frac": g["pad_frac"], "model": name, "error": reason})
hf_eager = {r["pad_frac"]: r["tokens_per_s"] for r in bert_rows if r["model"] == "HF" and not r["compile"] and "error" not in r}
for r in bert_rows:  # against HF eager (measured in the eager process, not interleaved with compiled runs)
    if "error" not in r and r["pad_frac"] in hf_eager:
        r["speedup_vs_hf_eager"] = r["tokens_per_s"] / hf_eager[r["pad_frac"]]
summary["bert"] = bert_rows

def run_metrics(name):
    """Per-epoch view of a run's metrics.jsonl: val accuracy with the elapsed time at its step."""
    path = out / name / "metrics.jsonl"
    if not path.is_file():
        return None
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train:
        return {"epochs": [], "note": "no training record"}
    def elapsed_at(step):  # the training record at the step, else the first one after it
        after = [r for r in train if r["step"] >= step]
        return after[0]["elapsed_s"] if after else train[-1]["elapsed_s"]
    epochs = [{"step": v["step"], "acc": v.get("acc"), "elapsed_s": elapsed_at(v["step"])} for v in val]
    ips = [r["images_per_s"] for r in train[1:] if r.get("images_per_s")]  # the first window compiles
    return {"epochs": epochs, "images_per_s": sum(ips) / len(ips) if ips else None,
            "last_step": train[-1]["step"], "last_elapsed_s": train[-1]["elapsed_s"]}

def per_epoch(r):
    """Epochs completed, the first epoch's time (compilation included) and the mean of the later ones."""
    if not r or not r.get("epochs"):
        return r
    ep = r["epochs"]
    full = [e for e in ep if e["step"] % ep[0]["step"] == 0]  # the last evaluation may be cut short
    r.update(steps_per_epoch=ep[0]["step"], epochs_done=len(full), first_epoch_s=full[0]["elapsed_s"],
             val_acc=ep[-1]["acc"], best_acc=max((e["acc"] or 0) for e in ep))
    if len(full) >= 2:
        r["epoch_s"] = (full[-1]["elapsed_s"] - full[0]["elapsed_s"]) / (len(full) - 1)
    return r

vit = per_epoch(run_metrics("vit"))
if vit and vit.get("epoch_s") is not None:
    vit["projected_100_epochs_s"] = vit["first_epoch_s"] + 99 * vit["epoch_s"]
summary["vit"] = vit
cnn = per_epoch(run_metrics("cnn"))
if cnn and cnn.get("epochs"):
    hit = next((e for e in cnn["epochs"] if (e["acc"] or 0) >= 0.85), None)
    cnn["time_to_85_s"] = hit["elapsed_s"] if hit else None
    cnn["epoch_reaching_85"] = hit["step"] // cnn["steps_per_epoch"] if hit else None
summary["cnn"] = cnn
summary["profile"] = load("profile.json")

def mae_metrics():
    """The MAE run: images/s (after the first, compiling, window), the last val loss and its baseline."""
    path = out / "mae" / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    ips = [r["images_per_s"] for r in train[1:] if r.get("images_per_s")]
    last = val[-1] if val else {}
    return {"last_step": train[-1]["step"] if train else None, "images_per_s": sum(ips) / len(ips) if ips else None,
            "val_step": last.get("step"), "val_loss": last.get("loss"), "baseline_loss": last.get("baseline_loss"),
            "pictures": len(list((out / "mae").glob("step_*.png")))}
summary["mae"] = mae_metrics()

def study_arms():
    """The MAE study's arms in the order they ran: the status of each (result.json), its steps and training
    minutes (the last training record), and its last validation accuracy (the mae arm: loss and baseline)."""
    study = out / "mae_study"
    if not study.is_dir():
        return None
    order = ["scratch", "mae", "finetune", "probe"]
    arms = {}
    for run in sorted((d for d in study.iterdir() if d.is_dir()),
                      key=lambda d: (order.index(d.name) if d.name in order else len(order), d.name)):
        result = load(f"mae_study/{run.name}/result.json") or {}
        path = run / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        train = [r for r in records if r.get("split") == "train"]
        val = [r for r in records if r.get("split") == "val"]
        last = val[-1] if val else {}
        arms[run.name] = {"status": result.get("status"), "error": result.get("error"),
                          "steps": result.get("step", train[-1]["step"] if train else None),
                          "minutes": train[-1]["elapsed_s"] / 60 if train else None,
                          "val_step": last.get("step"), "val_acc": last.get("acc"), "val_loss": last.get("loss"),
                          "baseline_loss": last.get("baseline_loss")}
    return arms
summary["mae_study"] = study_arms()

# the issue's goals
best = [r for r in bert_rows if "error" not in r and r["model"] != "HF" and r["pad_frac"] == 0]
top = max(best, key=lambda r: r["tokens_per_s"], default=None)
goals = {}
if top:
    goals["bert_mfu_ge_55pct"] = {"value": top["mfu"], "met": (top["mfu"] or 0) >= 0.55,
                                  "config": f"{top['model']}, compile={top['compile']}, pad 0"}
    goals["bert_2x_hf"] = {"value": top["speedup_vs_hf"], "met": (top["speedup_vs_hf"] or 0) >= 2.0,
                           "config": f"{top['model']}, compile={top['compile']} vs HF in the same process"}
if vit and vit.get("projected_100_epochs_s") is not None:
    goals["vit_100_epochs_le_600s"] = {"value": vit["projected_100_epochs_s"],
                                       "met": vit["projected_100_epochs_s"] <= 600,
                                       "note": "time only; 93% needs the full 100-epoch run"}
if cnn and cnn.get("epochs"):
    t = cnn.get("time_to_85_s")
    goals["cnn_85pct_le_60s"] = {"value": t, "met": t is not None and t <= 60,
                                 "note": f"best {cnn['best_acc']:.2%} in {cnn['epochs_done']} epochs"
                                         + (f", 85% at epoch {cnn['epoch_reaching_85']}" if t is not None else ", 85% not reached")}
summary["goals"] = goals
(out / "gpu_suite.json").write_text(json.dumps(summary, indent=2))

# Markdown
f = lambda v, fmt="{:.3g}": "-" if v is None else fmt.format(v)  # noqa: E731
pre = summary["preflight"] or {}
md = [f"# GPU suite: {pre.get('device') or 'no CUDA device'}", "",
      f"python {pre.get('python')}, torch {pre.get('torch')}; missing modules: "
      f"{', '.join(pre.get('missing_modules', [])) or 'none'}", "",
      "| step | rc | seconds | timeout |", "|---|---|---|---|"]
md += [f"| {n} | {s['rc']}{' (timed out)' if s['timed_out'] else ''} | {s['seconds']} | {s['timeout_s']} |"
       for n, s in steps.items()]
t = summary["tests"]
md += ["", "## Tests", ""]
if t:
    md.append(f"{t['passed']} passed, {t['failure']} failed, {t['error']} errors, {t['skipped']} skipped")
    md += [f"- {c['status']}: `{c['test']}` {c['detail']}" for c in t["cases"] if c["status"] != "passed"]
else:
    md.append("no results")
md += ["", "## BERT-base, batch 64 x 128, bf16, AdamW (tokens/s of real tokens)", "",
       "| compile | pad | model | backend | tokens/s | MFU | MFU (trainer) | x HF same run | x HF eager |",
       "|---|---|---|---|---|---|---|---|---|"]
for r in bert_rows:
    if "error" in r:
        md.append(f"| {r['compile']} | {r['pad_frac']} | {r['model']} | - | error: {r['error'][:120]} | | | | |")
    else:
        md.append(f"| {r['compile']} | {r['pad_frac']} | {r['model']} | {r['backend']} | {r['tokens_per_s']:,.0f} | "
                  f"{f(r['mfu'], '{:.1%}')} | {f(r['mfu_trainer'], '{:.1%}')} | {f(r['speedup_vs_hf'], '{:.2f}x')} | "
                  f"{f(r.get('speedup_vs_hf_eager'), '{:.2f}x')} |")
if not bert_rows:
    md.append("| no results | | | | | | | | |")
md += ["", "## CIFAR-10", "", "| run | epochs | val acc | images/s | first epoch s | epoch s | 100 epochs s | time to 85% s |",
       "|---|---|---|---|---|---|---|---|"]
for name, r in (("vit_cifar", vit), ("cnn_cifar", cnn)):
    if not r or not r.get("epochs"):
        md.append(f"| {name} | no results | | | | | | |")
        continue
    md.append(f"| {name} | {r['epochs_done']} | {f(r['val_acc'], '{:.2%}')} | {f(r['images_per_s'], '{:,.0f}')} | "
              f"{f(r.get('first_epoch_s'), '{:.1f}')} | {f(r.get('epoch_s'), '{:.2f}')} | "
              f"{f(r.get('projected_100_epochs_s'), '{:.0f}')} | {f(r.get('time_to_85_s'), '{:.1f}')} |")
mae = summary["mae"]
md += ["", "## MAE (recipes/mae_cifar_gpu.yaml, briefly)", ""]
md.append("no results" if not mae else
          f"{mae['last_step']} steps, {f(mae['images_per_s'], '{:,.0f}')} images/s; val loss {f(mae['val_loss'], '{:.4f}')} "
          f"at step {mae['val_step']} (per-patch-mean baseline {f(mae['baseline_loss'], '{:.4f}')}); "
          f"{mae['pictures']} reconstruction pictures")
study = summary["mae_study"]
md += ["", "## MAE study (recipes/studies/mae_cifar_gpu.yaml, its time budgets scaled; the sweep's report: "
       "mae_study/report.md)", ""]
if study:
    md += ["| arm | status | steps | minutes | val acc | val loss (mae: against the per-patch-mean baseline) |",
           "|---|---|---|---|---|---|"]
    for name, a in study.items():
        status = a["status"] or "no result.json"
        if a["error"]:
            status += f": {a['error'][:120]}"
        loss = f(a["val_loss"], "{:.4f}") + (f" (baseline {f(a['baseline_loss'], '{:.4f}')})" if a["baseline_loss"] is not None else "")
        md.append(f"| {name} | {status} | {f(a['steps'], '{}')} | {f(a['minutes'], '{:.2f}')} | "
                  f"{f(a['val_acc'], '{:.2%}')} | {loss} |")
else:
    md.append("no results")
md += ["", "## Profile (GPU idle share of the profiled steps; top kernels)", ""]
for name, r in (summary["profile"] or {}).items():
    if "error" in r:
        md.append(f"- {name}: error: {r['error']}")
        continue
    md.append(f"- {name}: step {f(r.get('step_s', 0) * 1e3, '{:.1f}')} ms, GPU idle {f(r.get('gpu_idle_fraction'), '{:.1%}')} "
              f"(waits on host: {r.get('gpu_waits_on_host')}), data wait {f((r.get('host') or {}).get('data_wait_s'), '{:.2e}')} s, "
              f"read {f((r.get('host') or {}).get('data_read_s'), '{:.2e}')} s, backend {r.get('attn_backend')}")
    md += [f"  - {k['share']:.1%} `{k['name'][:90]}`" for k in r.get("top_kernels", [])]
md += ["", "## Goals", ""]
md += [f"- {k}: {'met' if g['met'] else 'NOT met'} ({f(g['value'])}; {g.get('config') or g.get('note') or ''})"
       for k, g in goals.items()] or ["- nothing measured"]
(out / "gpu_suite.md").write_text("\n".join(md) + "\n")
print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}")
PY
}

# ------------------------------------------------------------------ dry run
if [ "$DRY" = 1 ]; then
    errors=0
    ok() { echo "ok:      $*"; }
    warn() { echo "warning: $*"; }
    err() { echo "error:   $*"; errors=$((errors + 1)); }
    for f in $FILES; do [ -f "$f" ] && ok "$f" || err "$f is missing"; done
    command -v timeout >/dev/null && ok "timeout command" || err "no 'timeout' command"
    if [ -f "$DATA_FILE" ]; then
        size=$(stat -c %s "$DATA_FILE")
        [ "$size" -le $((60 * 1024 * 1024)) ] && ok "$DATA_FILE ($size bytes)" \
            || warn "$DATA_FILE is $size bytes: with the code it may pass the 64 MiB carry limit"
    else
        warn "$DATA_FILE not there yet (vit, cnn, mae, mae_study and the ViT profile need it): mkdir -p gpu_data/cifar10 && cp ../shared/data/cifar10/*.parquet gpu_data/cifar10/"
    fi
    grep -qx "gpu_data/" .gitignore 2>/dev/null && ok "gpu_data/ is git-ignored" || warn "gpu_data/ is not in .gitignore"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    preflight "$tmp/preflight.json" | sed 's/^/ok:      preflight: /' || err "the preflight failed"
    for mode in eager compile; do
        extra=(); [ $mode = compile ] && extra=(--compile)
        "$PY" bench/bert_throughput.py "${BERT_ARGS[@]}" "${extra[@]}" --json "$tmp/b.json" --dry-run >/dev/null \
            && ok "bench/bert_throughput.py accepts its $mode arguments" || err "bench/bert_throughput.py rejects its $mode arguments"
    done
    "$PY" bench/gpu_profile.py "${PROFILE_ARGS[@]}" --json "$tmp/p.json" --dry-run >/dev/null \
        && ok "bench/gpu_profile.py accepts its arguments" || err "bench/gpu_profile.py rejects its arguments"
    # the recipes with the overrides, validated as xformer train will (no data is read)
    sets() { local a=(); while [ $# -gt 0 ]; do [ "$1" = --set ] || a+=("$1"); shift; done; printf '%s\n' "${a[@]}"; }
    "$PY" - <(sets "${VIT_SETS[@]}") <(sets "${CNN_SETS[@]}") <(sets "${MAE_SETS[@]}") <<'PY' && ok "recipes with the suite's --set overrides" || err "a recipe rejects the suite's --set overrides"
import sys
from xformer.commands.recipe import load_recipe
for recipe, path in (("recipes/vit_cifar.yaml", sys.argv[1]), ("recipes/cnn_cifar.yaml", sys.argv[2]),
                     ("recipes/mae_cifar_gpu.yaml", sys.argv[3])):
    load_recipe(recipe, open(path).read().split())
PY
    # the study as the step runs it: the scaled copy expands into its arms, each config validated (no data is read)
    if study_copy "$tmp/mae_study.yaml" && arms=$("$PY" - "$tmp/mae_study.yaml" "$tmp/mae_study" $(sets "${STUDY_SETS[@]}") <<'PY'
import sys
from xformer.commands.sweep import expand
root, runs = expand(sys.argv[1], sys.argv[3:], out_dir=sys.argv[2])
print(", ".join(f"{r.name} {r.cfg.train.max_minutes:g}" for r in runs))
PY
    ); then
        ok "$STUDY scaled to MAE_STUDY_MINUTES=$MAE_STUDY_MINUTES expands into its arms (minutes: $arms)"
    else
        err "$STUDY scaled to MAE_STUDY_MINUTES=$MAE_STUDY_MINUTES does not expand"
    fi
    "$PY" -m pytest --collect-only "${TEST_ARGS[@]}" >"$tmp/collect.log" 2>&1 \
        && ok "pytest collects $(awk -F': ' '/::/ {n++} /\.py: [0-9]+$/ {n += $2} END {print n + 0}' "$tmp/collect.log") GPU tests" || err "pytest cannot collect the GPU tests (see: ${TEST_ARGS[*]})"
    summarize "$tmp" >/dev/null && [ -f "$tmp/gpu_suite.md" ] && ok "the summary writes gpu_suite.json and gpu_suite.md" \
        || err "the summary fails on an empty run"
    nominal=0
    for s in $ORDER; do step_selected "$s" && nominal=$((nominal + NOMINAL[$s])); done
    [ $nominal -le "${SUITE_BUDGET_S:-460}" ] \
        || warn "the selected steps need about $nominal s, more than SUITE_BUDGET_S=${SUITE_BUDGET_S:-460}: the last ones will be cut short"
    echo "steps:$SELECTED; ViT $VIT_EPOCHS epochs; budget ${SUITE_BUDGET_S:-460} s"
    [ $errors = 0 ] && { echo "dry run OK"; exit 0; }
    echo "dry run: $errors error(s)"; exit 1
fi

# ------------------------------------------------------------------ the run
OUT=${OUT:-runs/gpu_suite}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
WORK=${SUITE_WORK:-$(mktemp -d /tmp/gpu_suite.XXXXXX)}
mkdir -p "$WORK"
export XFORMER_CACHE="$WORK/cache"
START=$(date +%s)
DEADLINE=$((START + ${SUITE_BUDGET_S:-460}))
: > "$OUT/steps.tsv"

if [ -d gpu_data/wheels ] && ls gpu_data/wheels/*.whl >/dev/null 2>&1; then  # optional wheelhouse
    "$PY" -m pip install --quiet --no-index --no-deps --target "$WORK/site" gpu_data/wheels/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
{ timeout 20 nvidia-smi 2>&1 | head -20; preflight "$OUT/preflight.json"; } > "$OUT/preflight.log" 2>&1
tail -1 "$OUT/preflight.log"
[ -f "$DATA_FILE" ] || echo "warning: $DATA_FILE is missing: vit, cnn, mae, mae_study and the ViT profile will fail (carry gpu_data)"

run_step() {  # name, command...: under the time left minus what the later selected steps are owed
    local name=$1; shift
    local owed=0 later=0 s
    for s in $ORDER; do
        [ $later = 1 ] && step_selected "$s" && owed=$((owed + NOMINAL[$s]))
        [ "$s" = "$name" ] && later=1
    done
    local limit=$((DEADLINE - $(date +%s) - owed))
    [ $limit -lt 10 ] && limit=10
    echo "== $name (timeout ${limit} s)"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$OUT/steps.tsv"
    echo "   rc $rc in $(( $(date +%s) - t0 )) s; log $OUT/$name.log"
    tail -3 "$OUT/$name.log" | sed 's/^/   | /'
}

if selected tests; then
    run_step tests "$PY" -m pytest "${TEST_ARGS[@]}" --junitxml="$OUT/tests_junit.xml"
fi
if selected bert; then
    run_step bert_eager "$PY" bench/bert_throughput.py "${BERT_ARGS[@]}" --json "$OUT/bert_eager.json"
    run_step bert_compile "$PY" bench/bert_throughput.py "${BERT_ARGS[@]}" --compile --json "$OUT/bert_compile.json"
fi
for run in vit cnn; do
    selected $run || continue
    sets=("${VIT_SETS[@]}"); [ $run = cnn ] && sets=("${CNN_SETS[@]}")
    rm -rf "$WORK/$run"
    run_step $run "$PY" -m xformer train "recipes/${run}_cifar.yaml" --out "$WORK/$run" "${sets[@]}"
    mkdir -p "$OUT/$run"
    cp "$WORK/$run"/metrics.jsonl "$WORK/$run"/config.yaml "$OUT/$run/" 2>/dev/null
done
if selected profile; then
    run_step profile "$PY" bench/gpu_profile.py "${PROFILE_ARGS[@]}" --work "$WORK/profile" --json "$OUT/profile.json"
fi
if selected mae; then
    rm -rf "$WORK/mae"
    run_step mae "$PY" -m xformer pretrain recipes/mae_cifar_gpu.yaml --out "$WORK/mae" "${MAE_SETS[@]}"
    mkdir -p "$OUT/mae"
    cp "$WORK/mae"/metrics.jsonl "$WORK/mae"/config.yaml "$WORK/mae"/recon/step_*.png "$OUT/mae/" 2>/dev/null
fi
if selected mae_study; then
    rm -rf "$WORK/mae_study"
    if study_copy "$WORK/mae_study.yaml" > "$OUT/mae_study.log" 2>&1; then
        run_step mae_study "$PY" -m xformer sweep "$WORK/mae_study.yaml" --out "$WORK/mae_study" "${STUDY_SETS[@]}"
    else
        printf 'mae_study\t1\t0\t0\n' >> "$OUT/steps.tsv"
        echo "== mae_study: the scaled copy of $STUDY failed; log $OUT/mae_study.log"
    fi
    mkdir -p "$OUT/mae_study"
    for run in "$WORK/mae_study"/*/; do
        [ -d "$run" ] || continue
        arm="$OUT/mae_study/$(basename "$run")"
        mkdir -p "$arm"
        cp "$run"metrics.jsonl "$run"result.json "$run"config.yaml "$run"train.log "$arm/" 2>/dev/null
        cp "$run"recon/step_*.png "$arm/" 2>/dev/null   # the mae arm's reconstruction pictures
    done
    cp "$WORK/mae_study"/report.md "$WORK/mae_study"/*.png "$OUT/mae_study/" 2>/dev/null
fi
summarize "$OUT"
echo "total $(( $(date +%s) - START )) s"
cat "$OUT/gpu_suite.md"
