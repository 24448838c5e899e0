"""Demo and test models, built offline: the demo model (real Gemma 3 270M weights with an
untrained vision tower) and tiny random-weight checkpoints with MedGemma's architecture
(``build.py``). Not used when serving real MedGemma weights."""
