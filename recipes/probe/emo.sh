#!/usr/bin/env bash
# Emomusic (1000 songs) static emotion regression: valence and arousal (R2), MARBLE-style probing.
# Layout: $ROOT/clips_45seconds/<song_id>.mp3 and $ROOT/annotations/static_annotations.csv; with
# annotations/songs_info.csv present the MediaEval 2013 evaluation set is the test set (as MARBLE),
# otherwise a seeded 80/10/10 split. Labels are the annotated means (1-9 scale), "valence;arousal".
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the Emomusic folder (the one holding clips_45seconds/)}
. "$(dirname "$0")/common.sh"

probe_task emo emo_regression
