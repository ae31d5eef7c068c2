"""Pipeline wiring: the graph (:mod:`pipelines.medgemma_grpo`), compile, local run, Vertex submit."""
