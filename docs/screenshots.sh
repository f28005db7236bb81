#!/usr/bin/env bash
# Screenshots of what a person looks at, taken the way a person sees it: headless Chromium (Debian's
# `chromium` package) on the MLflow UI and on the evaluation report.
#
#   bash docs/screenshots.sh RESULTS_DIR EXPERIMENT OUT_PREFIX
#
# writes OUT_PREFIX-mlflow-runs.png (the experiment's runs table, model runs only),
# OUT_PREFIX-mlflow-compare.png (the compare view of the model runs) and OUT_PREFIX-report.png
# (RESULTS_DIR/evaluate/results.html), OUT_PREFIX-plot-<name>.png for every evaluate/*.png and
# OUT_PREFIX-status.png (`electra-ds status RESULTS_DIR`). The MLflow UI listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
results=$(realpath "$1"); experiment=$2; prefix=$3
venv=${VENV:-.venv}
port=${PORT:-5055}
shoot() {  # url, file, height
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,"$3" \
        --virtual-time-budget=20000 --screenshot="$2" "$1" >/dev/null 2>&1
    echo "wrote $2"
}
"$venv/bin/mlflow" ui --backend-store-uri "sqlite:///$results/mlflow.db" --host 127.0.0.1 --port "$port" \
    >/tmp/electra-ds-mlflow-ui.log 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
read -r exp_id runs < <("$venv/bin/python" - "$results" "$experiment" <<'PY'
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
exp = client.get_experiment_by_name(sys.argv[2])
runs = client.search_runs([exp.experiment_id], filter_string="tags.`electra_ds.kind` = 'model'",
                          order_by=["attributes.start_time ASC"])
print(exp.experiment_id, json.dumps([r.info.run_id for r in runs], separators=(",", ":")))
PY
)
base="http://127.0.0.1:$port/#"
filter=$(python3 -c 'import urllib.parse; print(urllib.parse.quote("tags.`electra_ds.kind` = '"'"'model'"'"'"))')
shoot "$base/experiments/$exp_id/runs?searchFilter=$filter" "$prefix-mlflow-runs.png" 900
shoot "$base/compare-runs?runs=$runs&experiments=[\"$exp_id\"]" "$prefix-mlflow-compare.png" 1600
shoot "file://$results/evaluate/results.html" "$prefix-report.png" 2400
# every plot on its own, as a browser shows it, and `electra-ds status` as a terminal shows it
for png in "$results"/evaluate/*.png; do
    shoot "file://$png" "$prefix-plot-$(basename "$png")" 1250
done
"$venv/bin/electra-ds" status "$results" > "/tmp/electra-ds-status-$$.txt"
"$venv/bin/python" - "/tmp/electra-ds-status-$$.txt" "$results" <<'PY'
import html, sys
text = open(sys.argv[1]).read()
open(sys.argv[1] + ".html", "w").write(
    '<html><body style="background:#1e1e1e;color:#ddd;margin:0;padding:12px"><pre style="font:14px monospace">'
    f"$ electra-ds status {html.escape(sys.argv[2])}\n{html.escape(text)}</pre></body></html>")
PY
shoot "file:///tmp/electra-ds-status-$$.txt.html" "$prefix-status.png" 560
rm -f "/tmp/electra-ds-status-$$.txt" "/tmp/electra-ds-status-$$.txt.html"
