"""Robot actions: declared in ``[[actions]]``, reached by a phrase (fast path) or by the model
(grammar-constrained), run on a microcontroller over the serial line (``T``/``R``), safely."""
