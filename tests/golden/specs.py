# Copied unchanged from the project's conformance kit (shared/golden/specs.py): facts about the official
# PANNs models (qiuqiangkong/audioset_tagging_cnn, MIT); used by tests/test_golden.py.
"""Official constructor arguments for each model checked against the reference."""
A32 = dict(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000, classes_num=527)
A16 = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)
A8 = dict(sample_rate=8000, window_size=256, hop_size=80, mel_bins=64, fmin=50, fmax=4000, classes_num=527)

# HEAD: the output layer's key prefix, scaled in fill.py.
HEAD = {"Cnn14_DecisionLevelAtt": "att_block.", "Transfer_Cnn14": "fc_transfer."}
DEFAULT_HEAD = "fc_audioset."

SPECS = {
    "Cnn14": A32,
    "Cnn14_16k": A16,
    "Cnn14_8k": A8,
    "Cnn6": A32,
    "Cnn10": A32,
    "Cnn14_DecisionLevelMax": A32,
    "Cnn14_DecisionLevelAtt": A32,
    "Wavegram_Logmel_Cnn14": A32,
    "ResNet38": A32,
    "MobileNetV1": A32,
    "Transfer_Cnn14": dict(A32, classes_num=10, freeze_base=False),
    # The rest of the official model zoo (checkpoints released for each).
    "Cnn14_DecisionLevelAvg": A32,
    "Cnn14_no_specaug": A32,
    "Cnn14_no_dropout": A32,
    "Cnn14_emb512": A32,
    "Cnn14_emb128": A32,
    "Cnn14_emb32": A32,
    "Cnn14_mixup_time_domain": A32,
    "Cnn14_mel32": dict(A32, mel_bins=32),
    "Cnn14_mel128": dict(A32, mel_bins=128),
    "ResNet22": A32,
    "ResNet54": A32,
    "MobileNetV2": A32,
    "LeeNet11": A32,
    "LeeNet24": A32,
    "DaiNet19": A32,
    "Res1dNet31": A32,
    "Res1dNet51": A32,
    "Wavegram_Cnn14": A32,
    "Wavegram_Logmel128_Cnn14": dict(A32, mel_bins=128),
}

# The models a release must match; the rest are reported as coverage.
CORE = ["Cnn14", "Cnn14_16k", "Cnn14_8k", "Cnn6", "Cnn10", "Cnn14_DecisionLevelMax",
        "Cnn14_DecisionLevelAtt", "Wavegram_Logmel_Cnn14", "ResNet38", "MobileNetV1",
        "Transfer_Cnn14"]
