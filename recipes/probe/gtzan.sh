#!/usr/bin/env bash
# GTZAN genre classification (10 classes, accuracy), MARBLE-style probing of a frozen encoder.
# Layout: $ROOT/genres/<genre>/<genre>.000NN.wav|.au (or Kaggle's $ROOT/Data/genres_original/...). Put the
# fault-filtered lists train_filtered.txt, valid_filtered.txt, test_filtered.txt (coreyker/dnn-mgr, gtzan/)
# in $ROOT to use the standard split; without them a seeded stratified 80/10/10 split is made.
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the GTZAN folder (the one holding genres/)}
. "$(dirname "$0")/common.sh"

probe_task gtzan gtzan_genre
