"""Meta-learning methods compared with (or built on) the BASE core.

One module per method. Each uses the core (data, evaluation conventions) and
the core never imports a method:

* ``base.methods.maml``: MAML with the fixed Conv-4 backbone, the baseline
  that BASE's searched architectures are compared with.
"""
