"""The official ``pytorch/models.py`` import path: ``from models import Cnn14`` (with ``pytorch/`` on ``sys.path``, as
the official scripts and the code built on them do) gives the classes of ``panns.models``
(``pytorch/panns/models.py``), where the zoo is written once."""
from panns.models import *  # noqa: F401,F403  (the 30 official classes, their blocks and helpers, the registry)
# ``import *`` skips private names; the official file's residual pieces are imported by name by code built on it.
from panns.models import (_resnet_conv1x1, _resnet_conv1x1_wav1d, _resnet_conv3x1_wav1d,  # noqa: F401,E402
                          _resnet_conv3x3, _ResNet, _ResnetBasicBlock, _ResnetBasicBlockWav1d, _ResnetBottleneck,
                          _ResNetWav1d)
