"""The frontend language: gen, select, fork, chat roles and @function programs.

Written to SGLang's frontend API; a program for SGLang runs after ``import plait as sgl``.
Where plait differs:

- ``select(temperature>0)`` samples a choice from the softmax of the mean token logprobs
  (SGLang's RuntimeEndpoint asserts temperature 0).
- ``join("concate_and_append")`` appends the forks' texts and recomputes them (no KV-cache
  concatenation); the resulting text is the same.
- ``run_batch(generator_style=True)``, ``image`` and ``video`` raise.
- Logprob entries always carry the token text (``return_text_in_logprobs`` is on).
- ``separate_reasoning`` also splits streamed gens (SGLang skips them).
- A node that fails raises its own exception type from ``run`` (and from ``s[...]``,
  ``s.text()``), with notes naming the node and the program line that added it.
"""
