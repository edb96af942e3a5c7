"""PyTorch reference models for the weight-import tests: a DenseNet with torchvision's (and
torchxrayvision's) module names. Import it only from tests that use torch; a missing torch skips
the importing test module. Imported as a top-level module: tests/conftest.py puts tests/ on
sys.path."""

import pytest

torch = pytest.importorskip("torch")


class TorchDenseLayer(torch.nn.Module):
  def __init__(self, cin, growth, bn_size):
    super().__init__()
    nn = torch.nn
    self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
    self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
    self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
    self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

  def forward(self, x):
    y = self.conv1(self.relu1(self.norm1(x)))
    return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], 1)


class TorchDenseNet(torch.nn.Module):
  """DenseNet-121 by default; mdx's 'densenet_tiny' is blocks (2, 2), growth 8, init 16, bn_size 2.
  Without a head (`head=False`) only the state dict is of use: there is no classifier to call."""

  def __init__(
    self, classes=3, cin=1, blocks=(6, 12, 24, 16), growth=32, init=64, bn_size=4, head=True
  ):
    super().__init__()
    nn = torch.nn
    f = nn.Sequential()
    f.add_module("conv0", nn.Conv2d(cin, init, 7, 2, 3, bias=False))
    f.add_module("norm0", nn.BatchNorm2d(init))
    f.add_module("relu0", nn.ReLU())
    f.add_module("pool0", nn.MaxPool2d(3, 2, 1))
    c = init
    for i, n in enumerate(blocks):
      block = nn.Sequential()
      for j in range(n):
        block.add_module(f"denselayer{j + 1}", TorchDenseLayer(c + j * growth, growth, bn_size))
      f.add_module(f"denseblock{i + 1}", block)
      c += n * growth
      if i < len(blocks) - 1:
        t = nn.Sequential()
        t.add_module("norm", nn.BatchNorm2d(c))
        t.add_module("relu", nn.ReLU())
        t.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
        t.add_module("pool", nn.AvgPool2d(2, 2))
        f.add_module(f"transition{i + 1}", t)
        c //= 2
    f.add_module("norm5", nn.BatchNorm2d(c))
    self.features = f
    self.classifier = nn.Linear(c, classes) if head else None

  def forward(self, x):
    y = torch.relu(self.features(x))
    return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def randomize_batchnorm(model, seed=0):
  """Random BatchNorm scales, offsets and running statistics (from a generator seeded with
  `seed`), so that a reference's outputs depend on every BatchNorm tensor."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
  return model
