"""The offline demo's pieces, apart from the library: a synthetic labelled data set and example clip
(``demo.data``, also used to calibrate ONNX int8 exports) and the checks that judge each demo step
(``demo.checks``). ``scripts/demo.sh`` runs them through ``utils/make_demo_dataset.py`` and
``utils/demo_checks.py``."""
