"""Models and decoding, shared by the teacher (curation) and the trainers (training).

`registry` loads a Tunix model with its tokenizer (the embedded Gemma 3 270M from its
GGUF, a Hugging Face folder, a tiny test model); `decode` samples from one fast;
`likelihood` scores text under one. Nothing here imports curation/, training/ or Prefect.
"""
