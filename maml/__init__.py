"""MAML with the progressive evaluation mechanism (docs/design.md, "MAML" and "PEM").

    maml.train  meta-train on cfe.encode's caches (maml.pem: PEM as a transform of meta-batches)
    maml.test   meta-test a run on its test or val split (maml.selection: which checkpoint; fewshot.checks: what is
                refused before evaluating)
"""
