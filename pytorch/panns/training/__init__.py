"""Training: one concern, one folder. The ``main.py train`` path reads as a line:

    panns.main (flags) -> training.config.TrainConfig -> training.audioset.AudioSetTask
        -> training.core.Trainer (the one loop: step, evaluation, checkpoint, exact resume)

Fine-tuning (``finetune_template.py``) runs the same ``Trainer`` over ``training.finetune.FineTuneTask``.
"""
