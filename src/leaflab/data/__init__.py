"""Datasets. Sources, one package each, selected by `data.source` (the download stage depends on the chosen
package only): synthetic/ (eSpeak NG keyword set), speechcommands/ (Speech Commands v0.02 download), folder/ (your
own recordings, read in place). Then the split rules (splits.py), the audio rules that turn a file into a clip
(clips.py), preprocessing into per-split arrays (preprocess.py, atomic.py) and the torch Dataset (dataset.py).

Nothing heavy is imported here, so process-pool workers that import a submodule start quickly.
"""
