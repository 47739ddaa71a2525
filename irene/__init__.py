"""irene: extreme classification with generated classifiers for novel items (IRENE, KDD'24).

faiss is imported before torch anywhere both are used: each bundles its own OpenMP runtime
and loading torch's first can crash or deadlock faiss on some platforms.
"""

__version__ = "0.1.0"
