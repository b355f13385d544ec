"""Masks: source person masks M_r (source.py), the target-mask predictor M_e (model.py, train.py,
predict.py), a training-free geometric fallback (geometric.py), the prepare stage (stage.py) and the
`train-seg` / `eval-seg` commands (cli.py, evaluate.py). See docs/masks.md."""
