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
  # A `none` edge is no edge: the argmax genotype's cells draw only the rest.
  logits["normal"][:, 0] = 1.5  # none wins most edges of the normal cell
  sparse = derive_genotype(logits, prims, 2, rule="argmax")
  for cell_type in ("normal", "reduce"):
    ax = plots.draw_cell(sparse, cell_type)
    drawn = [t.get_text() for t in ax.texts if t.get_text() in prims]
    kept = [op for op, _ in getattr(sparse, cell_type) if op != "none"]
    assert sorted(drawn) == sorted(kept)
  assert any(op == "none" for op, _ in sparse.normal)
  assert plots.edge_labels(2) == ["n0<-c_{k-2}", "n0<-c_{k-1}", "n1<-c_{k-2}",
                                  "n1<-c_{k-1}", "n1<-n0"]
