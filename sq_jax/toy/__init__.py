"""The tiny embedded world: a tiny model and its tokenizer, procedural problems, optimiser rewrites and preference
pairs, so the whole pipeline runs offline in minutes.

Importing the package (any module of it) registers its corpora with `sq_jax.data.sources` (the `procedural:`
schemes), so a config naming `procedural:150:11` reads like one naming a file. The generic reader knows no toy
corpus: the layers that read configs' sources (the CLI, the pipeline's seed stage) import `sq_jax.toy`.
"""

from sq_jax.toy import corpora

corpora.register()
