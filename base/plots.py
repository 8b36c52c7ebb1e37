"""Pictures: a genotype's cells, and architecture distributions as heat maps.

Both write PNG files with matplotlib's non-interactive Agg backend, so they
work on headless machines and in notebooks alike (notebooks can display the
returned figure).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from base.distributions import host_probabilities
from base.genotype import Genotype


def edge_labels(num_nodes: int) -> list[str]:
  """``"n{i}<-{input}"`` for every supernet edge, in the logits' order."""
  names = ["c_{k-2}", "c_{k-1}"]
  labels = []
  for node in range(num_nodes):
    labels.extend(f"n{node}<-{names[j] if j < 2 else f'n{j - 2}'}"
                  for j in range(2 + node))
  return labels


def draw_cell(genotype: Genotype, cell_type: str, ax=None):
  """Draws one cell of ``genotype``: inputs, nodes, op-labelled edges."""
  node_edges = genotype.node_edges(cell_type)
  num_nodes = len(node_edges)
  if ax is None:
    _, ax = plt.subplots(figsize=(2.2 * (num_nodes + 2), 3.6))
  positions = {0: (0.0, 1.0), 1: (0.0, -1.0)}
  for node in range(num_nodes):
    positions[2 + node] = (1.5 * (node + 1), 1.2 if node % 2 else -0.2)
  output = (1.5 * (num_nodes + 1), 0.4)
  names = {0: "c_{k-2}", 1: "c_{k-1}"}
  names.update({2 + n: str(n) for n in range(num_nodes)})
  for node, edges in enumerate(node_edges):
    for op, source in edges:
      if op == "none":  # no edge
        continue
      (x0, y0), (x1, y1) = positions[source], positions[2 + node]
      ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                  arrowprops=dict(arrowstyle="->", color="tab:blue", lw=1.2,
                                  shrinkA=14, shrinkB=14))
      ax.text((x0 + x1) / 2, (y0 + y1) / 2, op, fontsize=7, ha="center",
              va="center", bbox=dict(boxstyle="round,pad=0.15", fc="white",
                                     ec="none", alpha=0.85))
  for index in getattr(genotype, f"{cell_type}_concat"):
    (x0, y0) = positions[index]
    ax.annotate("", xy=output, xytext=(x0, y0),
                arrowprops=dict(arrowstyle="->", color="0.6", lw=0.8,
                                shrinkA=14, shrinkB=14))
  for index, (x, y) in positions.items():
    color = "lightgreen" if index < 2 else "lightblue"
    ax.text(x, y, names[index], ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="circle,pad=0.3" if index >= 2 else
                      "round,pad=0.3", fc=color, ec="black"))
  ax.text(*output, "c_{k}", ha="center", va="center", fontsize=9,
          bbox=dict(boxstyle="round,pad=0.3", fc="khaki", ec="black"))
  ax.set_xlim(-0.7, output[0] + 0.7)
  ax.set_ylim(-1.8, 2.0)
  ax.set_title(f"{cell_type} cell")
  ax.axis("off")
  return ax


def save_genotype_figure(genotype: Genotype, path: str | os.PathLike) -> str:
  """Both cells of ``genotype`` in one PNG; returns the path."""
  width = 2.2 * (genotype.num_nodes + 2)
  fig, axes = plt.subplots(2, 1, figsize=(width, 7.2))
  draw_cell(genotype, "normal", axes[0])
  draw_cell(genotype, "reduce", axes[1])
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return os.fspath(path)


def save_arch_heatmap(distributions: Mapping[str, Mapping[str, np.ndarray]],
                      primitives: Sequence[str], num_nodes: int,
                      path: str | os.PathLike) -> str:
  """Per-edge operation probabilities of several architecture distributions.

  Args:
    distributions: name (e.g. "prior", "posterior task 1") -> arch logits
      ``{"normal": [E, O], "reduce": [E, O]}``.
    primitives: the O operation names.
    num_nodes: nodes per cell (E = sum of 2 + i).
  """
  names = list(distributions)
  labels = edge_labels(num_nodes)
  fig, axes = plt.subplots(
      2, len(names), squeeze=False,
      figsize=(1.0 + 0.45 * len(primitives) * len(names),
               2.0 + 0.5 * len(labels)))
  image = None
  for col, name in enumerate(names):
    for row, cell_type in enumerate(("normal", "reduce")):
      probs = host_probabilities(distributions[name][cell_type])
      ax = axes[row][col]
      image = ax.imshow(probs, vmin=0.0, vmax=1.0, cmap="viridis",
                        aspect="auto")
      ax.set_xticks(range(len(primitives)), primitives if row else [],
                    rotation=60, ha="right", fontsize=7)
      ax.set_yticks(range(len(labels)), labels if col == 0 else [],
                    fontsize=7)
      ax.set_title(f"{name}: {cell_type}", fontsize=9)
  fig.colorbar(image, ax=axes, shrink=0.6, label="probability")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return os.fspath(path)
