#!/usr/bin/env bash
# "Would stabmon have caught my last divergence?": import a past run into the collector (its
# detector judges it as it would have live; the alerts show on the dashboard at their steps), then
# judge a detector setting on it offline. RUN is a TensorBoard logdir, a CSV/TSV or JSON-lines
# export, or a Hugging Face trainer_state.json; the import needs STABMON_URL and STABMON_TOKEN.
#
#     examples/past_runs.sh runs/llama-1b-lr3e-4
set -euo pipefail
RUN=${1:?usage: examples/past_runs.sh RUN (a TensorBoard logdir, CSV, JSONL or trainer_state.json)}

stabmon import "$RUN" --name my-old-run --config lr=3e-4    # into the collector, through the client
stabmon backtest "$RUN" --set logit_max.critical=1000       # offline: first alerts, recall, lead
