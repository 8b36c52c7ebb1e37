"""Pictures are written and show what they should."""

import numpy as np
from PIL import Image

from base import plots
from base.genotype import Genotype, derive_genotype


def test_genotype_figure_and_heatmap(tmp_path):
  prims = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
  rng = np.random.default_rng(0)
  logits = {k: rng.normal(size=(5, 4)) for k in ("normal", "reduce")}
  genotype = derive_genotype(logits, prims, 2)
  assert isinstance(genotype, Genotype)
  cells = plots.save_genotype_figure(genotype, tmp_path / "cells.png")
  heat = plots.save_arch_heatmap({"prior": logits, "posterior": logits},
                                 prims, 2, tmp_path / "heat.png")
  for path in (cells, heat):
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 10, "the picture is not blank"
  assert plots.edge_labels(2) == ["n0<-c_{k-2}", "n0<-c_{k-1}", "n1<-c_{k-2}",
                                  "n1<-c_{k-1}", "n1<-n0"]
