r"""Transfer a prior meta-trained elsewhere (Omniglot) to CIFAR-10.

The Omniglot prior takes one-channel 28x28 images, so CIFAR-10 is read in
grayscale at 28x28. Any saved prior works the same way (transfer.prior_path),
as long as its image channels match transfer.grayscale.

  python launch.py --config=configs/omniglot.py --workdir=runs/omniglot
  python launch.py --config=configs/cifar10_transfer.py --workdir=runs/c10t \
      --config.transfer.prior_path=runs/omniglot/prior.msgpack
"""

import ml_collections

from configs import cifar10
from configs import omniglot


def get_config() -> ml_collections.ConfigDict:
  config = omniglot.get_config()
  config.mode = "transfer"
  config.transfer = cifar10.get_config().transfer
  config.transfer.update(dict(prior_path="runs/omniglot/prior.msgpack",
                              image_size=28, grayscale=True))
  return config
