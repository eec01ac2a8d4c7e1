"""What each DVC stage does, one module per stage (the scripts in stages/ parse their argument and call `run`).

download and preprocess live in leaflab.data; train, visualize, evaluate and compare here. Each `run` takes the
validated config and the file layout (leaflab.layout), reads what the stage's dvc.yaml entry lists as
dependencies and writes what it lists as outputs.
"""
