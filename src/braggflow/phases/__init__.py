"""Phase retrieval from structure-factor amplitudes (rules/phases.smk): a dataset of perturbed small-molecule
crystals (``dataset``), the origin and hand the amplitudes cannot tell (``origins``), the loss every model shares
(``loss``), the four networks (``models``), their training (``train``) and evaluation (``evaluate``)."""
