"""Accuracy target mode (in the spirit of NNCF's ``quantize_with_accuracy_control``): after quantization,
measure the target (output SQNR vs the float model, and/or a user metric's drop) on held-out data; while it is
missed, change the layers whose change gains the most (raise to 8 bits, or leave in float), one at a time
(for a method that reconstructs: on the calibrated model, then reconstruct again).

- ``target``: the target and how the evaluation data is split off (pure);
- ``changes``: one layer's change applied to a ``QuantState`` (8-bit RTN weights, 8-bit input, float weights);
- ``search``: one stage's ranking and greedy search, and the evaluator that measures a state;
- ``rounds``: for a method that reconstructs, changes chosen on the calibrated model, then reconstruction again;
- ``control``: the entry point that runs the rounds and the stages;
- ``report``: what was changed (steps, rounds), in the result and the CLI's table;
- ``cost``: weight bytes and (optional) onnxruntime latency before and after.
"""
