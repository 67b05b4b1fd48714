"""Write torchvision_layouts.json: the state-dict names and shapes of torchvision's ImageNet
MobileNetV2, ResNet-18 and ResNet-50, for the test that our networks load those checkpoints.

Needs torchvision (not a dependency of the engine); run from the repository root:

    python tests/data/torchvision_layouts.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torchvision
from torchvision.models import mobilenet_v2, resnet18, resnet50

layouts = {name: [[k, list(v.shape)] for k, v in factory().state_dict().items()]
           for name, factory in (("mobilenet_v2", mobilenet_v2), ("resnet18", resnet18), ("resnet50", resnet50))}
out = Path(__file__).with_suffix(".json")
lines = [f'{{"torchvision": {json.dumps(torchvision.__version__)}, "layouts": {{']
for i, (name, entries) in enumerate(layouts.items()):
    lines.append(f"{json.dumps(name)}: [")
    lines += [json.dumps(e) + ("," if j < len(entries) - 1 else "") for j, e in enumerate(entries)]
    lines.append("]" + ("," if i < len(layouts) - 1 else ""))
out.write_text("\n".join([*lines, "}}"]) + "\n")
print(f"wrote {out}")
