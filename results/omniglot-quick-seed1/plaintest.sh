#!/usr/bin/env bash
# once maml-plain of SEED has finished its 20 epochs (its process has ended): the test split, once (testplain.sh)
s=$1; R=/work/exp/runs/val-s$s
until [ "$(wc -l < $R/maml-plain/metrics.jsonl)" -ge 20 ] && ! pgrep -f "out runs/val-s$s/maml-plain" >/dev/null; do sleep 10; done
bash /work/exp/testplain.sh $s
